//! Custom backward passes on candle's autograd, for training: a value computed without a
//! graph enters it through [`with_backward`], whose backward is a closure. Two uses: a
//! frozen weight's matmul, whose backward gives the input's gradient only (candle's own
//! matmul backward also computes the weight's, as much work again, and a frozen W0 needs
//! none), and a trainer's gradient checkpointing (a block recomputed in the backward pass).

use std::sync::Mutex;

use candle_core::backend::{BackendDevice, BackendStorage};
use candle_core::{
    CpuStorage, CudaStorage, CustomOp1, CustomOp2, CustomOp3, Layout, MetalStorage, Shape, Storage,
    Tensor, Var,
};

/// The backward of [`with_backward`]: (the input, the output's gradient) → the input's
/// gradient (None: none).
pub type Backward =
    dyn Fn(&Tensor, &Tensor) -> candle_core::Result<Option<Tensor>> + Send + Sync + 'static;

/// The backward of [`with_backward_n`]: (the inputs, the output's gradient) → each input's
/// gradient, in order (None: none).
pub type BackwardN =
    dyn Fn(&[&Tensor], &Tensor) -> candle_core::Result<Vec<Option<Tensor>>> + Send + Sync + 'static;

/// `value` (computed from `input` without a graph) as a tensor of the graph whose gradient
/// goes to `input` through `backward`. Without a graph to join (`input` tracks nothing),
/// `value` itself. The graph holds the value once: pass it by value and keep no clone.
pub fn with_backward(
    input: &Tensor,
    value: Tensor,
    backward: Box<Backward>,
) -> candle_core::Result<Tensor> {
    with_backward_n(
        &[input],
        value,
        Box::new(move |inputs, grad| Ok(vec![backward(inputs[0], grad)?])),
    )
}

/// [`with_backward`] for one to three inputs: `value` (computed from `inputs` without a
/// graph) joins the graph as one node whose backward is `backward`; the inputs that track
/// nothing get no gradient whatever `backward` returns. The node holds the inputs and its
/// own value, nothing else of how the value was computed.
pub fn with_backward_n(
    inputs: &[&Tensor],
    value: Tensor,
    backward: Box<BackwardN>,
) -> candle_core::Result<Tensor> {
    if !inputs.iter().any(|t| t.track_op()) {
        return Ok(value);
    }
    let op = Joined {
        value: Mutex::new(Some(value.detach())),
        backward,
    };
    drop(value);
    match inputs {
        [a] => a.apply_op1(op),
        [a, b] => a.apply_op2(b, op),
        [a, b, c] => a.apply_op3(b, c, op),
        _ => candle_core::bail!("with_backward_n takes 1 to 3 inputs, not {}", inputs.len()),
    }
}

/// `f(inputs)` as one node of the graph that keeps only the inputs and the result: `f` runs
/// without a graph in the forward pass and again, with one, in the backward pass (a
/// recompute segment: the gradients are those of `f`'s own ops, exactly). For chains of
/// cheap elementwise ops whose intermediates would otherwise all live until the backward
/// pass (norms, rotary, softmax attention, SiLU·mul). `f` must be deterministic.
pub fn recomputed<F>(inputs: &[&Tensor], f: F) -> candle_core::Result<Tensor>
where
    F: Fn(&[Tensor]) -> candle_core::Result<Tensor> + Send + Sync + 'static,
{
    let detached: Vec<Tensor> = inputs.iter().map(|t| t.detach()).collect();
    let value = f(&detached)?;
    drop(detached);
    with_backward_n(
        inputs,
        value,
        Box::new(move |args, grad| {
            let mut vars = Vec::with_capacity(args.len());
            let mut xs = Vec::with_capacity(args.len());
            for a in args {
                if a.track_op() {
                    let v = Var::from_tensor(&a.detach())?;
                    xs.push(v.as_tensor().clone());
                    vars.push(Some(v));
                } else {
                    xs.push(a.detach());
                    vars.push(None);
                }
            }
            let y = f(&xs)?;
            drop(xs);
            // d/dx Σ y·g = gᵀ·dy/dx: the output's gradient carried through `f`.
            let grads = (y * grad.detach())?.sum_all()?.backward()?;
            Ok(vars
                .iter()
                .map(|v| v.as_ref().and_then(|v| grads.get(v.as_tensor()).cloned()))
                .collect())
        }),
    )
}

/// x·W for a frozen W: the same value and input gradient as `x.matmul(w)` (the same
/// operations), without computing W's gradient in the backward pass, and one tensor in the
/// graph (the product, computed in place of the node's value).
pub fn frozen_matmul(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    if !x.track_op() {
        return x.matmul(w);
    }
    x.apply_op2(&w.detach(), FrozenMatmul)
}

/// x [.., m, k] · W [.., k, n] as candle's matmul runs it; W gets no gradient.
struct FrozenMatmul;

impl FrozenMatmul {
    fn fwd<S: BackendStorage>(
        x: &S,
        xl: &Layout,
        w: &S,
        wl: &Layout,
    ) -> candle_core::Result<(S, Shape)> {
        let (a, b) = (xl.dims(), wl.dims());
        let dim = a.len();
        if dim < 2 || b.len() != dim {
            candle_core::bail!("frozen matmul of {:?} by {:?}", a, b);
        }
        let (m, k, k2, n) = (a[dim - 2], a[dim - 1], b[dim - 2], b[dim - 1]);
        let batch: usize = a[..dim - 2].iter().product();
        let batch_w: usize = b[..dim - 2].iter().product();
        if k != k2 || batch != batch_w || m * n == 0 || k == 0 {
            candle_core::bail!("frozen matmul of {:?} by {:?}", a, b);
        }
        let shape = Shape::from(&a[..dim - 2]).extend(&[m, n]);
        Ok((x.matmul(w, (batch, m, n, k), xl, wl)?, shape))
    }
}

impl CustomOp2 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "zhiku-frozen-matmul"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        w: &CpuStorage,
        wl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        Self::fwd(x, xl, w, wl)
    }

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        xl: &Layout,
        w: &CudaStorage,
        wl: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        Self::fwd(x, xl, w, wl)
    }

    fn metal_fwd(
        &self,
        x: &MetalStorage,
        xl: &Layout,
        w: &MetalStorage,
        wl: &Layout,
    ) -> candle_core::Result<(MetalStorage, Shape)> {
        Self::fwd(x, xl, w, wl)
    }

    fn bwd(
        &self,
        _x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(grad.matmul(&w.t()?)?), None))
    }
}

/// The LoRA layer of a training forward as one node: y = x·W0 (+ bias) + scale·((x⊙mask)·Aᵀ)·Bᵀ,
/// `wt` = W0ᵀ [in, out] frozen, `a` [r, in], `b` [out, r], `mask` the dropout on LoRA's input
/// (already scaled by 1/(1-p); None: none). The value is the same ops as the composition
/// (bit for bit); the graph keeps x, A, B, the mask and y, where the composition keeps the
/// masked input, the low-rank and full-width products, the scaled update and both sums. The
/// backward computes the gradients in closed form: with G = scale·dy and L = (x⊙m)·Aᵀ,
/// dB = Gᵀ·L, dA = (G·B)ᵀ·(x⊙m), dx = dy·wtᵀ + ((G·B)·A)⊙m.
#[allow(clippy::too_many_arguments)]
pub fn lora_linear(
    x: &Tensor,
    wt: &Tensor,
    bias: Option<&Tensor>,
    a: &Tensor,
    b: &Tensor,
    scale: f64,
    mask: Option<Tensor>,
) -> candle_core::Result<Tensor> {
    let masked = |x: &Tensor, mask: &Option<Tensor>| match mask {
        Some(m) => x * m,
        None => Ok(x.clone()),
    };
    let value = {
        let x = x.detach();
        let mut y = x.matmul(wt)?;
        if let Some(bias) = bias {
            y = y.broadcast_add(bias)?;
        }
        let xs = masked(&x, &mask)?;
        let update = (xs.matmul(&a.detach().t()?)?.matmul(&b.detach().t()?)? * scale)?;
        (y + update)?
    };
    let wt = wt.detach();
    // The mask kept as bytes (0 or 1) and its one non-zero value: x⊙mask is (x⊙m01)·keep,
    // bit for bit (a product by 1 or 0 is exact), in a quarter of the memory (f32).
    let kept = match &mask {
        Some(m) => {
            let keep = m
                .max_all()?
                .to_dtype(candle_core::DType::F64)?
                .to_scalar::<f64>()?;
            Some((m.ne(0.0)?, keep))
        }
        None => None,
    };
    drop(mask);
    let masked = move |x: &Tensor| -> candle_core::Result<Tensor> {
        match &kept {
            Some((m01, keep)) => (x * m01.to_dtype(x.dtype())?)? * *keep,
            None => Ok(x.clone()),
        }
    };
    with_backward_n(
        &[x, a, b],
        value,
        Box::new(move |args, grad| {
            let (x, a, b) = (args[0].detach(), args[1].detach(), args[2].detach());
            let grad = grad.detach();
            let g = (&grad * scale)?;
            let xs = masked(&x)?;
            let low = xs.matmul(&a.t()?)?;
            let gb = g.t()?.matmul(&low)?;
            drop(low);
            let glow = g.matmul(&b)?;
            let ga = glow.t()?.matmul(&xs)?;
            drop(xs);
            let gx = if args[0].track_op() {
                let through_lora = masked(&glow.matmul(&a)?)?;
                Some((grad.matmul(&wt.t()?)? + through_lora)?)
            } else {
                None
            };
            Ok(vec![gx, Some(ga), Some(gb)])
        }),
    )
}

/// Σ over rows of the cross-entropy of `logits` [n, vocab] against `targets` [n, 1] (u32):
/// the same value, by the same ops, as the composition log-sum-exp − the target's logit
/// (with the row maximum held constant); one node that keeps only the logits. Backward:
/// dlogits = g·(softmax(logits) − onehot(target)).
pub fn cross_entropy_sum(logits: &Tensor, targets: &Tensor) -> candle_core::Result<Tensor> {
    let value = {
        let logits = logits.detach();
        let max = logits.max_keepdim(candle_core::D::Minus1)?;
        let lse = logits
            .broadcast_sub(&max)?
            .exp()?
            .sum_keepdim(candle_core::D::Minus1)?
            .log()?
            .add(&max)?;
        let picked = logits.gather(targets, 1)?;
        (lse - picked)?.sum_all()?
    };
    let targets = targets.clone();
    with_backward(
        logits,
        value,
        Box::new(move |logits, grad| {
            let p = candle_nn::ops::softmax_last_dim(&logits.detach())?;
            let (n, _) = p.dims2()?;
            let minus_one = Tensor::full(-1f32, (n, 1), p.device())?.to_dtype(p.dtype())?;
            let d = p.scatter_add(&targets, &minus_one, 1)?;
            drop(p);
            Ok(Some(d.broadcast_mul(&grad.detach())?))
        }),
    )
}

/// The node of [`with_backward_n`]: its value is handed over once, at the forward.
struct Joined {
    value: Mutex<Option<Tensor>>,
    backward: Box<BackwardN>,
}

/// A copy of `storage` under `layout`, contiguous.
fn copy_of<S>(storage: &S, layout: &Layout) -> candle_core::Result<(S, Shape)>
where
    S: BackendStorage,
    S::Device: BackendDevice<Storage = S>,
{
    let shape = layout.shape().clone();
    let mut out = storage.device().zeros_impl(&shape, storage.dtype())?;
    storage.copy_strided_src(&mut out, 0, layout)?;
    Ok((out, shape))
}

impl Joined {
    /// The value, taken (the node keeps only the copy it returns).
    fn take(&self) -> candle_core::Result<Tensor> {
        self.value
            .lock()
            .map_err(|_| candle_core::Error::Msg("a joined value's lock is poisoned".into()))?
            .take()
            .ok_or_else(|| candle_core::Error::Msg("a joined value was taken twice".into()))
    }

    fn cpu(&self) -> candle_core::Result<(CpuStorage, Shape)> {
        let value = self.take()?;
        let (storage, layout) = value.storage_and_layout();
        match &*storage {
            Storage::Cpu(s) => copy_of(s, layout),
            _ => candle_core::bail!("a joined value on another device than its inputs"),
        }
    }

    fn cuda(&self) -> candle_core::Result<(CudaStorage, Shape)> {
        let value = self.take()?;
        let (storage, layout) = value.storage_and_layout();
        match &*storage {
            Storage::Cuda(s) => copy_of(s, layout),
            _ => candle_core::bail!("a joined value on another device than its inputs"),
        }
    }

    fn metal(&self) -> candle_core::Result<(MetalStorage, Shape)> {
        let value = self.take()?;
        let (storage, layout) = value.storage_and_layout();
        match &*storage {
            Storage::Metal(s) => copy_of(s, layout),
            _ => candle_core::bail!("a joined value on another device than its inputs"),
        }
    }

    fn grads(&self, args: &[&Tensor], grad: &Tensor) -> candle_core::Result<Vec<Option<Tensor>>> {
        let mut grads = (self.backward)(args, grad)?;
        grads.resize(args.len(), None);
        for (g, a) in grads.iter_mut().zip(args) {
            if !a.track_op() {
                *g = None;
            }
        }
        Ok(grads)
    }
}

impl CustomOp1 for Joined {
    fn name(&self) -> &'static str {
        "zhiku-joined"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        self.cpu()
    }

    fn cuda_fwd(&self, _: &CudaStorage, _: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        self.cuda()
    }

    fn metal_fwd(
        &self,
        _: &MetalStorage,
        _: &Layout,
    ) -> candle_core::Result<(MetalStorage, Shape)> {
        self.metal()
    }

    fn bwd(&self, a: &Tensor, _: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(self.grads(&[a], grad)?.pop().flatten())
    }
}

impl CustomOp2 for Joined {
    fn name(&self) -> &'static str {
        "zhiku-joined"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.cpu()
    }

    fn cuda_fwd(
        &self,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        self.cuda()
    }

    fn metal_fwd(
        &self,
        _: &MetalStorage,
        _: &Layout,
        _: &MetalStorage,
        _: &Layout,
    ) -> candle_core::Result<(MetalStorage, Shape)> {
        self.metal()
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let mut g = self.grads(&[a, b], grad)?.into_iter();
        Ok((g.next().flatten(), g.next().flatten()))
    }
}

impl CustomOp3 for Joined {
    fn name(&self) -> &'static str {
        "zhiku-joined"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.cpu()
    }

    fn cuda_fwd(
        &self,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        self.cuda()
    }

    fn metal_fwd(
        &self,
        _: &MetalStorage,
        _: &Layout,
        _: &MetalStorage,
        _: &Layout,
        _: &MetalStorage,
        _: &Layout,
    ) -> candle_core::Result<(MetalStorage, Shape)> {
        self.metal()
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        c: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let mut g = self.grads(&[a, b, c], grad)?.into_iter();
        Ok((g.next().flatten(), g.next().flatten(), g.next().flatten()))
    }
}

/// What the gradient tests of the training nodes share (here, `layers` and `attention`).
#[cfg(test)]
pub(crate) mod grad_check {
    use candle_core::backprop::GradStore;
    use candle_core::{Device, Tensor};

    /// A deterministic f64 matrix: sin(0.37·i + seed).
    pub fn seeded(shape: (usize, usize), seed: f64) -> Tensor {
        let n = shape.0 * shape.1;
        Tensor::arange(0f64, n as f64, &Device::Cpu)
            .and_then(|t| t.affine(0.37, seed)?.sin())
            .and_then(|t| t.reshape(shape))
            .unwrap()
    }

    pub fn values(t: &Tensor) -> Vec<f64> {
        t.flatten_all().unwrap().to_vec1::<f64>().unwrap()
    }

    /// The largest |a - b| relative to the largest |b|.
    pub fn rel_diff(a: &Tensor, b: &Tensor) -> f64 {
        let (a, b) = (values(a), values(b));
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-300);
        a.iter()
            .zip(&b)
            .fold(0f64, |m, (x, y)| m.max((x - y).abs()))
            / scale
    }

    /// The gradients of Σ(output ⊙ probe): every output element weighed differently.
    pub fn probed(output: Tensor, probe: &Tensor) -> GradStore {
        (output * probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap()
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::grad_check::{probed, rel_diff, seeded, values};
    use super::*;

    #[test]
    fn a_frozen_matmul_has_matmuls_value_and_input_gradient_and_no_weight_gradient() {
        let x = Var::from_tensor(
            &Tensor::arange(0f64, 12.0, &Device::Cpu)
                .and_then(|t| t.reshape((3, 4)))
                .and_then(|t| t.sin())
                .unwrap(),
        )
        .unwrap();
        let w = Tensor::arange(0f64, 20.0, &Device::Cpu)
            .and_then(|t| t.reshape((4, 5)))
            .and_then(|t| t.cos())
            .unwrap();
        let weight = Var::from_tensor(&w).unwrap();
        let probe = Tensor::arange(0f64, 15.0, &Device::Cpu)
            .and_then(|t| t.reshape((3, 5)))
            .unwrap();
        let loss = |y: Tensor| (y * &probe).unwrap().sum_all().unwrap();

        let plain = x.as_tensor().matmul(weight.as_tensor()).unwrap();
        let frozen = frozen_matmul(x.as_tensor(), weight.as_tensor()).unwrap();
        let values = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        assert_eq!(values(&plain), values(&frozen));

        let with_weight = loss(plain).backward().unwrap();
        let without = loss(frozen).backward().unwrap();
        assert_eq!(
            values(with_weight.get(x.as_tensor()).unwrap()),
            values(without.get(x.as_tensor()).unwrap())
        );
        assert!(with_weight.get(weight.as_tensor()).is_some());
        assert!(
            without.get(weight.as_tensor()).is_none(),
            "W0 got a gradient"
        );

        // No graph to join: the value itself, untracked.
        let untracked = frozen_matmul(&x.as_tensor().detach(), &w).unwrap();
        assert!(!untracked.track_op());
    }

    #[test]
    fn a_recomputed_node_has_the_compositions_value_and_gradients_exactly() {
        let x = Var::from_tensor(&seeded((4, 6), 0.1)).unwrap();
        let y = Var::from_tensor(&seeded((4, 6), 0.7)).unwrap();
        let frozen = seeded((4, 6), 1.3);
        let probe = seeded((4, 6), 2.9);
        let f = |t: &[Tensor]| -> candle_core::Result<Tensor> {
            let s = (t[0].sqr()? + &t[2])?.exp()?;
            (candle_nn::ops::silu(&s)? * &t[1])?.tanh()
        };
        let composed = f(&[x.as_tensor().clone(), y.as_tensor().clone(), frozen.clone()]).unwrap();
        let node = recomputed(&[x.as_tensor(), y.as_tensor(), &frozen], f).unwrap();
        assert_eq!(values(&composed), values(&node));
        let g1 = probed(composed, &probe);
        let g2 = probed(node, &probe);
        for v in [&x, &y] {
            assert_eq!(
                values(g1.get(v.as_tensor()).unwrap()),
                values(g2.get(v.as_tensor()).unwrap())
            );
        }
        assert!(
            g2.get(&frozen).is_none(),
            "an untracked input got a gradient"
        );
    }

    /// The LoRA layer as candle's autograd runs it, op by op.
    fn lora_composed(
        x: &Tensor,
        wt: &Tensor,
        bias: Option<&Tensor>,
        a: &Tensor,
        b: &Tensor,
        scale: f64,
        mask: Option<&Tensor>,
    ) -> Tensor {
        let mut y = frozen_matmul(x, wt).unwrap();
        if let Some(bias) = bias {
            y = y.broadcast_add(bias).unwrap();
        }
        let xs = match mask {
            Some(m) => (x * m).unwrap(),
            None => x.clone(),
        };
        let update = (xs
            .matmul(&a.t().unwrap())
            .unwrap()
            .matmul(&b.t().unwrap())
            .unwrap()
            * scale)
            .unwrap();
        (y + update).unwrap()
    }

    #[test]
    fn the_lora_node_has_the_compositions_value_and_gradients() {
        let (rows, inp, out, rank) = (5, 7, 6, 3);
        let wt = seeded((inp, out), 0.2);
        let bias = seeded((1, out), 0.9).squeeze(0).unwrap();
        let probe = seeded((rows, out), 3.3);
        // Dropout with p = 0.25: a quarter of the entries 0, the rest 1/(1-p).
        let mask = Tensor::from_vec(
            (0..rows * inp)
                .map(|i| if i % 4 == 1 { 0.0 } else { 1.0 / 0.75 })
                .collect::<Vec<f64>>(),
            (rows, inp),
            &Device::Cpu,
        )
        .unwrap();
        for (bias, mask) in [(None, None), (Some(&bias), Some(&mask))] {
            let x = Var::from_tensor(&seeded((rows, inp), 0.4)).unwrap();
            let a = Var::from_tensor(&seeded((rank, inp), 1.1)).unwrap();
            let b = Var::from_tensor(&seeded((out, rank), 2.2)).unwrap();
            let composed = lora_composed(
                x.as_tensor(),
                &wt,
                bias,
                a.as_tensor(),
                b.as_tensor(),
                2.0,
                mask,
            );
            let node = lora_linear(
                x.as_tensor(),
                &wt,
                bias,
                a.as_tensor(),
                b.as_tensor(),
                2.0,
                mask.cloned(),
            )
            .unwrap();
            assert_eq!(values(&composed), values(&node), "the forward differs");
            let g1 = probed(composed, &probe);
            let g2 = probed(node, &probe);
            for v in [&x, &a, &b] {
                let d = rel_diff(
                    g2.get(v.as_tensor()).unwrap(),
                    g1.get(v.as_tensor()).unwrap(),
                );
                assert!(d < 1e-12, "gradient off by {d:e} (relative)");
            }
        }

        // A and B tracked, x not: no gradient for x; untracked A and B: the value itself.
        let x = seeded((rows, inp), 0.4);
        let a = Var::from_tensor(&seeded((rank, inp), 1.1)).unwrap();
        let b = Var::from_tensor(&seeded((out, rank), 2.2)).unwrap();
        let node = lora_linear(&x, &wt, None, a.as_tensor(), b.as_tensor(), 2.0, None).unwrap();
        let grads = probed(node, &probe);
        assert!(grads.get(&x).is_none());
        assert!(grads.get(a.as_tensor()).is_some());
        let plain = lora_linear(
            &x,
            &wt,
            None,
            &a.as_tensor().detach(),
            &b.as_tensor().detach(),
            2.0,
            None,
        )
        .unwrap();
        assert!(!plain.track_op());
    }

    #[test]
    fn the_cross_entropy_node_has_the_compositions_value_and_gradient() {
        let (rows, vocab) = (4, 9);
        let logits = Var::from_tensor(&(seeded((rows, vocab), 0.3) * 4.0).unwrap()).unwrap();
        let targets = Tensor::from_vec(vec![0u32, 8, 3, 3], (rows, 1), &Device::Cpu).unwrap();
        let l = logits.as_tensor();
        let max = l.max_keepdim(candle_core::D::Minus1).unwrap().detach();
        let lse = l
            .broadcast_sub(&max)
            .and_then(|t| t.exp())
            .and_then(|t| t.sum_keepdim(candle_core::D::Minus1))
            .and_then(|t| t.log())
            .and_then(|t| t.add(&max))
            .unwrap();
        let composed = (lse - l.gather(&targets, 1).unwrap())
            .unwrap()
            .sum_all()
            .unwrap();
        let node = cross_entropy_sum(l, &targets).unwrap();
        assert_eq!(values(&composed), values(&node), "the loss differs");
        let g1 = (composed * 0.7).unwrap().backward().unwrap();
        let g2 = (node * 0.7).unwrap().backward().unwrap();
        let d = rel_diff(g2.get(l).unwrap(), g1.get(l).unwrap());
        assert!(d < 1e-12, "gradient off by {d:e} (relative)");
    }
}
