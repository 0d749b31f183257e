// The fine-tuning panel: jobs of the tuner through /v1/fine_tuning/jobs (OpenAI's shape),
// a form that starts one from records pasted in, and the selected job's loss curve. Uses
// app.js's helpers (api, el, $, lang); polls only while the panel is open.
(() => {
  const S = {
    en: {
      title: 'Fine-tuning (LoRA)', records: 'Training records: alpaca or sharegpt, one JSON object a line',
      adapter: 'adapter name', epochs: 'epochs', train: 'Train', cancel: 'Cancel',
      job: 'job', status: 'status', steps: 'steps', loss: 'loss', eta: 'ETA', none: 'No jobs yet.',
      curve: 'Loss of {id}: steps (line), validation (dots)',
    },
    zh: {
      title: '微调（LoRA）', records: '训练数据：alpaca 或 sharegpt，每行一个 JSON 对象',
      adapter: '适配器名称', epochs: '轮数', train: '训练', cancel: '取消',
      job: '任务', status: '状态', steps: '步数', loss: '损失', eta: '剩余时间', none: '暂无任务。',
      curve: '{id} 的损失：每步（线），验证集（点）',
    },
  }[lang === 'zh' ? 'zh' : 'en'];
  const panel = $('tune-panel');
  if (!panel) return;
  panel.querySelector('summary').textContent = S.title;
  $('tune-records').placeholder = S.records;
  $('tune-adapter').placeholder = S.adapter;
  $('tune-epochs').placeholder = S.epochs;
  $('tune-start').textContent = S.train;
  let selected = null;
  let timer = null;

  const cell = (tr, text) => tr.append(el('td', '', text));
  const secs = (s) => (s > 0 ? `${Math.round(s)} s` : '');

  async function refresh() {
    const note = $('tune-note');
    let jobs;
    try {
      ({ data: jobs } = await api('GET', '/v1/fine_tuning/jobs'));
      note.textContent = jobs.length ? '' : S.none;
    } catch (e) {
      note.textContent = e.message;
      return;
    }
    const body = $('tune-jobs').querySelector('tbody');
    body.innerHTML = '';
    for (const job of jobs) {
      const p = job.zhiku.progress || {};
      const tr = el('tr', job.id === selected ? 'selected' : '');
      cell(tr, `${job.id} → ${job.zhiku.adapter_name}`);
      cell(tr, job.status + (job.zhiku.queue_position ? ` #${job.zhiku.queue_position}` : ''));
      cell(tr, p.total_steps ? `${p.step}/${p.total_steps}` : '');
      cell(tr, p.train_loss != null ? p.train_loss.toFixed(4) : '');
      cell(tr, job.status === 'running' ? secs(p.eta_seconds) : '');
      const td = el('td');
      if (job.status === 'queued' || job.status === 'running') {
        const b = el('button', 'danger', S.cancel);
        b.type = 'button';
        b.onclick = async (e) => {
          e.stopPropagation();
          await api('POST', `/v1/fine_tuning/jobs/${encodeURIComponent(job.id)}/cancel`).catch((x) => status(x.message, true));
          refresh();
        };
        td.append(b);
      }
      tr.append(td);
      tr.onclick = () => { selected = job.id; refresh(); };
      body.append(tr);
    }
    if (!selected && jobs.length) selected = jobs[0].id;
    if (selected) drawCurve(selected);
  }

  async function drawCurve(id) {
    let events;
    try {
      ({ data: events } = await api('GET', `/v1/fine_tuning/jobs/${encodeURIComponent(id)}/events?limit=10000`));
    } catch (e) {
      return;
    }
    events.reverse();
    const steps = events.filter((e) => e.data.kind === 'step').map((e) => [e.data.step, e.data.train_loss]);
    const valid = events.filter((e) => e.data.kind === 'epoch' && e.data.valid_loss != null)
      .map((e) => [e.data.step, e.data.valid_loss]);
    const svg = $('tune-curve');
    $('tune-curve-title').textContent = S.curve.replace('{id}', id);
    const all = steps.concat(valid);
    if (all.length === 0) { svg.innerHTML = ''; return; }
    const [w, h, pad] = [600, 200, 24];
    const maxX = Math.max(1, ...all.map((p) => p[0]));
    const ys = all.map((p) => p[1]);
    const [lo, hi] = [Math.min(...ys), Math.max(...ys)];
    const x = (v) => pad + ((w - 2 * pad) * v) / maxX;
    const y = (v) => h - pad - ((h - 2 * pad) * (v - lo)) / (hi - lo || 1);
    const line = steps.map((p) => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(' ');
    svg.innerHTML = `<polyline fill="none" stroke="currentColor" stroke-width="1.5" points="${line}"/>`
      + valid.map((p) => `<circle r="3.5" cx="${x(p[0]).toFixed(1)}" cy="${y(p[1]).toFixed(1)}"/>`).join('')
      + `<text x="2" y="${pad - 8}" font-size="11">${hi.toFixed(3)}</text>`
      + `<text x="2" y="${h - 6}" font-size="11">${lo.toFixed(3)}</text>`
      + `<text x="${w - pad}" y="${h - 6}" font-size="11" text-anchor="end">${maxX}</text>`;
  }

  $('tune-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const body = { training_data: $('tune-records').value, hyperparameters: {} };
    const name = $('tune-adapter').value.trim();
    if (name) body.suffix = name;
    const epochs = Number($('tune-epochs').value);
    if (epochs > 0) body.hyperparameters.n_epochs = epochs;
    try {
      const job = await api('POST', '/v1/fine_tuning/jobs', body);
      selected = job.id;
      refresh();
    } catch (x) {
      status(x.message, true);
    }
  });

  panel.addEventListener('toggle', () => {
    clearInterval(timer);
    if (panel.open) {
      refresh();
      timer = setInterval(refresh, 2000);
    }
  });
})();
