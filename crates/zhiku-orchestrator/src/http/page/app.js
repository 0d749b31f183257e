// zhiku's web page: knowledge bases and documents through the REST routes, questions
// through the streamed chat completion (/v1/chat/completions). No framework, no build step.
'use strict';

const I18N = {
  en: {
    tagline: 'ask your documents', kb: 'Knowledge base', deleteKb: 'Delete', create: 'Create',
    kbNew: 'new knowledge base name', drop: 'Drop files here, or click to choose (.txt .md .html .pdf .docx .csv)',
    documents: 'Documents', document: 'Document', passages: 'Passages', remove: 'Delete',
    question: 'Ask a question…', ask: 'Ask', newChat: 'New conversation',
    uploading: 'uploading', loaded: 'read', split: 'split into {n} passages', embedded: 'embedded {d}/{n}',
    stored: 'stored: {n} passages', failed: 'failed', noKb: 'Pick or create a knowledge base first.',
    refused: 'No relevant passage was found: the knowledge base cannot answer this.',
    sources: 'Sources', score: 'score', chunk: 'passage', confirmKb: 'Delete knowledge base {kb} and all its documents?',
    created: 'Created {kb}.', deleted: 'Deleted {x}.', none: 'no knowledge base yet',
    apiKey: 'API key (if the server needs one)', saveKey: 'Use key', keySaved: 'API key saved in this browser.',
    keyCleared: 'API key removed.',
    unauthorized: 'This server needs an API key: enter a valid key above (HTTP 401).',
    forbidden: 'This API key is read-only: uploads and deletions need a full-access key (HTTP 403).',
  },
  zh: {
    tagline: '向你的文档提问', kb: '知识库', deleteKb: '删除', create: '新建',
    kbNew: '新知识库名称', drop: '把文件拖到这里，或点击选择（.txt .md .html .pdf .docx .csv）',
    documents: '文档', document: '文档', passages: '段落', remove: '删除',
    question: '输入问题…', ask: '提问', newChat: '新对话',
    uploading: '上传中', loaded: '已读取', split: '已切分为 {n} 个段落', embedded: '已向量化 {d}/{n}',
    stored: '已入库：{n} 个段落', failed: '失败', noKb: '请先选择或新建知识库。',
    refused: '没有找到相关段落：知识库无法回答这个问题。',
    sources: '来源', score: '分数', chunk: '段落', confirmKb: '删除知识库 {kb} 及其全部文档？',
    created: '已新建 {kb}。', deleted: '已删除 {x}。', none: '还没有知识库',
    apiKey: 'API 密钥（服务器需要时填写）', saveKey: '使用密钥', keySaved: 'API 密钥已保存在此浏览器中。',
    keyCleared: '已移除 API 密钥。',
    unauthorized: '此服务器需要 API 密钥：请在上方输入有效的密钥（HTTP 401）。',
    forbidden: '此 API 密钥为只读：上传和删除需要完全访问权限的密钥（HTTP 403）。',
  },
};

const params = new URLSearchParams(location.search);
const lang = (params.get('lang') || navigator.language || 'en').toLowerCase().startsWith('zh') ? 'zh' : 'en';
const T = I18N[lang];
const maxTokens = Number(params.get('max_tokens')) || undefined;
const $ = (id) => document.getElementById(id);
const fmt = (s, vars) => s.replace(/\{(\w+)\}/g, (_, k) => String(vars[k]));

document.documentElement.lang = lang === 'zh' ? 'zh-CN' : 'en';
document.querySelectorAll('[data-t]').forEach((el) => { el.textContent = T[el.dataset.t]; });
document.querySelectorAll('[data-tp]').forEach((el) => { el.placeholder = T[el.dataset.tp]; });

// Counters for whoever watches the page (the browser test among them).
window.zhiku = { lang, chunks: 0, answers: 0, uploads: 0 };
let history = [];

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function escapeHtml(s) {
  return s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
}

function status(text, isError) {
  const s = $('status');
  s.textContent = text;
  s.className = isError ? 'error' : '';
}

// The API key (stored in this browser) goes with every API call as `authorization: Bearer`.
const KEY_ITEM = 'zhiku.apiKey';
const apiKey = () => localStorage.getItem(KEY_ITEM) || '';
function authHeaders(headers) {
  const key = apiKey();
  if (key) headers.authorization = `Bearer ${key}`;
  return headers;
}

// A call came back 401: the key form is marked and takes the focus, so the page asks for
// the key the server needs (saving one clears the mark and reloads the lists).
function askForKey() {
  $('key-form').classList.add('need-key');
  if (document.activeElement !== $('api-key')) $('api-key').focus();
}

// The message of a failed call: the page's own words for a missing or wrong key (401, and
// the key form asks for one) and a read-only one (403), else the server's message.
function failure(statusCode, data, fallback) {
  if (statusCode === 401) {
    askForKey();
    return T.unauthorized;
  }
  if (statusCode === 403) return T.forbidden;
  return (data && data.error && data.error.message) || fallback;
}

async function api(method, path, body) {
  const init = { method, headers: authHeaders({}) };
  if (body !== undefined) {
    init.headers['content-type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(failure(response.status, data, `${response.status} ${response.statusText}`));
  return data;
}

const kb = () => $('kb-select').value;
const kbPath = (name) => `/v1/knowledge_bases/${encodeURIComponent(name || kb())}`;

async function loadKbs(select) {
  try {
    const { data } = await api('GET', '/v1/knowledge_bases');
    const s = $('kb-select');
    const keep = select || s.value;
    s.innerHTML = '';
    if (data.length === 0) s.append(new Option(T.none, ''));
    for (const k of data) s.append(new Option(`${k.name} (${k.document_count})`, k.name));
    if (data.some((k) => k.name === keep)) s.value = keep;
    await loadDocs();
  } catch (e) { status(e.message, true); }
}

async function loadDocs() {
  const body = $('docs').querySelector('tbody');
  body.innerHTML = '';
  if (!kb()) return;
  try {
    const { data } = await api('GET', `${kbPath()}/documents`);
    for (const d of data) {
      const row = el('tr');
      // Who may read it (none: everyone with access to the knowledge base).
      const readers = d.readers && d.readers.length ? ` [${d.readers.join(', ')}]` : '';
      row.append(el('td', '', (d.source || d.document_id) + readers), el('td', '', String(d.chunk_count)));
      const cell = el('td');
      const del = el('button', 'small danger', T.remove);
      del.onclick = async () => {
        try {
          await api('DELETE', `${kbPath()}/documents/${d.document_id.split('/').map(encodeURIComponent).join('/')}`);
          status(fmt(T.deleted, { x: d.document_id }));
          await loadKbs();
        } catch (e) { status(e.message, true); }
      };
      cell.append(del);
      row.append(cell);
      body.append(row);
    }
  } catch (e) { status(e.message, true); }
}

function uploadOne(file) {
  const name = kb();
  const item = el('li', 'file');
  const bar = el('progress');
  bar.max = 100;
  bar.value = 0;
  const state = el('span', 'state', T.uploading);
  item.append(el('span', 'name', file.name), bar, state);
  $('uploads').prepend(item);
  const fail = (message) => {
    item.classList.add('failed');
    state.textContent = `${T.failed}: ${message}`;
  };
  const handle = (msg) => {
    if (msg.error) return fail(msg.error.message);
    if (msg.summary) {
      window.zhiku.uploads += 1;
      loadKbs(name);
      return undefined;
    }
    const f = msg.file;
    if (!f) return undefined;
    const vars = { n: f.chunks, d: f.done };
    switch (f.stage) {
      case 'loaded': bar.value = 50; state.textContent = T.loaded; break;
      case 'split': bar.value = 60; state.textContent = fmt(T.split, vars); break;
      case 'embedded': bar.value = 60 + (35 * f.done) / Math.max(1, f.chunks); state.textContent = fmt(T.embedded, vars); break;
      case 'stored': bar.value = 100; item.classList.add('done'); state.textContent = fmt(T.stored, vars); break;
      case 'failed': fail(f.error); break;
      default: break;
    }
    return undefined;
  };
  const xhr = new XMLHttpRequest();
  let seen = 0;
  const readLines = () => {
    const text = xhr.responseText;
    for (let nl = text.indexOf('\n', seen); nl >= 0; nl = text.indexOf('\n', seen)) {
      const line = text.slice(seen, nl);
      seen = nl + 1;
      if (line.trim()) {
        try { handle(JSON.parse(line)); } catch (e) { fail(e.message); }
      }
    }
  };
  xhr.open('POST', `${kbPath(name)}/documents`);
  xhr.setRequestHeader('accept', 'application/x-ndjson');
  for (const [name, value] of Object.entries(authHeaders({}))) xhr.setRequestHeader(name, value);
  xhr.upload.onprogress = (e) => { if (e.lengthComputable) bar.value = (40 * e.loaded) / e.total; };
  xhr.onprogress = readLines;
  xhr.onload = () => {
    if (xhr.status >= 400) {
      let data = {};
      try { data = JSON.parse(xhr.responseText); } catch (_) { /* not JSON */ }
      fail(failure(xhr.status, data, `${xhr.status} ${xhr.statusText}`));
    } else {
      readLines();
    }
  };
  xhr.onerror = () => fail('network error');
  const form = new FormData();
  form.append('files', file, file.name);
  xhr.send(form);
}

function upload(files) {
  if (!kb()) { status(T.noKb, true); return; }
  for (const file of files) uploadOne(file);
}

function renderAnswer(target, text, sources) {
  const numbers = new Set(sources.map((s) => String(s.number)));
  target.innerHTML = escapeHtml(text).replace(/\[(\d+)\]/g, (m, n) => (numbers.has(n) ? `<button type="button" class="cite" data-n="${n}">[${n}]</button>` : m));
}

function renderSources(target, sources) {
  target.innerHTML = '';
  if (sources.length === 0) return;
  target.append(el('strong', '', `${T.sources}: `));
  const list = el('ul');
  for (const s of sources) {
    const item = el('li');
    const cite = el('button', 'cite', `[${s.number}]`);
    cite.type = 'button';
    cite.dataset.n = s.number;
    item.append(cite, ` ${s.source} (${T.score} ${s.score.toFixed(3)})`);
    list.append(item);
  }
  target.append(list);
}

function showPassage(source) {
  $('passage-title').textContent = `[${source.number}] ${source.source}`;
  $('passage-meta').textContent = `${T.score} ${source.score.toFixed(4)} · ${T.chunk} ${source.chunk_index} · ${source.document_id}`;
  $('passage-text').textContent = source.text;
  $('passage').hidden = false;
}

async function ask(question) {
  if (!kb()) { status(T.noKb, true); return; }
  const turn = el('div', 'turn');
  const answer = el('div', 'answer streaming');
  const sourcesBox = el('div', 'sources');
  turn.append(el('div', 'q', question), answer, sourcesBox);
  turn.sources = [];
  $('conversation').append(turn);
  const messages = history.concat([{ role: 'user', content: question }]);
  let text = '';
  let refused = false;
  try {
    const response = await fetch('/v1/chat/completions', {
      method: 'POST',
      headers: authHeaders({ 'content-type': 'application/json' }),
      body: JSON.stringify({ model: `kb:${kb()}`, stream: true, messages, max_tokens: maxTokens, zhiku: { sources_in_content: false } }),
    });
    if (!response.ok) {
      const data = await response.json().catch(() => ({}));
      throw new Error(failure(response.status, data, `${response.status}`));
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf('\n\n')) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        for (const line of block.split('\n')) {
          if (!line.startsWith('data:')) continue;
          const data = line.slice(5).trim();
          if (data === '[DONE]') continue;
          const chunk = JSON.parse(data);
          if (chunk.error) throw new Error(chunk.error.message);
          if (chunk.zhiku) {
            if (chunk.zhiku.sources) turn.sources = chunk.zhiku.sources;
            if (chunk.zhiku.refused) refused = true;
          }
          const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
          if (delta && delta.content) {
            text += delta.content;
            window.zhiku.chunks += 1;
            renderAnswer(answer, text, turn.sources);
          }
        }
      }
    }
    answer.classList.remove('streaming');
    if (refused) {
      turn.classList.add('refused');
      turn.insertBefore(el('div', 'refusal-note', T.refused), answer);
    } else {
      renderSources(sourcesBox, turn.sources);
    }
    history = messages.concat([{ role: 'assistant', content: text }]);
    window.zhiku.answers += 1;
  } catch (e) {
    answer.classList.remove('streaming');
    answer.append(el('div', 'error', e.message));
    window.zhiku.answers += 1;
  }
}

$('conversation').addEventListener('click', (e) => {
  const cite = e.target.closest('button.cite');
  if (!cite) return;
  const turn = cite.closest('.turn');
  const source = turn && turn.sources.find((s) => String(s.number) === cite.dataset.n);
  if (source) showPassage(source);
});
$('passage-close').onclick = () => { $('passage').hidden = true; };
$('kb-select').onchange = () => { history = []; $('conversation').innerHTML = ''; loadDocs(); };
$('kb-form').onsubmit = async (e) => {
  e.preventDefault();
  const name = $('kb-new').value.trim();
  try {
    await api('POST', '/v1/knowledge_bases', { name });
    $('kb-new').value = '';
    status(fmt(T.created, { kb: name }));
    await loadKbs(name);
  } catch (err) { status(err.message, true); }
};
$('kb-delete').onclick = async () => {
  const name = kb();
  if (!name || !window.confirm(fmt(T.confirmKb, { kb: name }))) return;
  try {
    await api('DELETE', kbPath(name));
    status(fmt(T.deleted, { x: name }));
    await loadKbs();
  } catch (err) { status(err.message, true); }
};
$('file-input').onchange = (e) => { upload(e.target.files); e.target.value = ''; };
const drop = $('drop');
drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
drop.addEventListener('dragleave', () => drop.classList.remove('over'));
drop.addEventListener('drop', (e) => { e.preventDefault(); drop.classList.remove('over'); upload(e.dataTransfer.files); });
$('ask-form').onsubmit = (e) => {
  e.preventDefault();
  const q = $('question').value.trim();
  if (!q) return;
  $('question').value = '';
  ask(q);
};
$('question').addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && !e.shiftKey) { e.preventDefault(); $('ask-form').requestSubmit(); }
});
$('new-chat').onclick = () => { history = []; $('conversation').innerHTML = ''; };
$('api-key').value = apiKey();
$('key-form').onsubmit = (e) => {
  e.preventDefault();
  const key = $('api-key').value.trim();
  if (key) localStorage.setItem(KEY_ITEM, key); else localStorage.removeItem(KEY_ITEM);
  $('key-form').classList.remove('need-key');
  status(key ? T.keySaved : T.keyCleared);
  loadKbs();
};
loadKbs();
