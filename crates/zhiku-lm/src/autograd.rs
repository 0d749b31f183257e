//! Custom backward passes on candle's autograd, for training: a value computed without a
//! graph enters it through [`with_backward`], whose backward is a closure. Two uses: a
//! frozen weight's matmul, whose backward gives the input's gradient only (candle's own
//! matmul backward also computes the weight's, as much work again, and a frozen W0 needs
//! none), and a trainer's gradient checkpointing (a block recomputed in the backward pass).

use candle_core::backend::{BackendDevice, BackendStorage};
use candle_core::{CpuStorage, CudaStorage, CustomOp2, Layout, MetalStorage, Shape, Tensor};

/// The backward of [`with_backward`]: (the input, the output's gradient) → the input's
/// gradient (None: none).
pub type Backward =
    dyn Fn(&Tensor, &Tensor) -> candle_core::Result<Option<Tensor>> + Send + Sync + 'static;

/// `value` (computed from `input` without a graph) as a tensor of the graph whose gradient
/// goes to `input` through `backward`. Without a graph to join (`input` tracks nothing),
/// `value` itself.
pub fn with_backward(
    input: &Tensor,
    value: &Tensor,
    backward: Box<Backward>,
) -> candle_core::Result<Tensor> {
    if !input.track_op() {
        return Ok(value.clone());
    }
    // Detached: the graph never walks into how the value was computed.
    input.apply_op2(&value.detach(), WithBackward(backward))
}

/// x·W for a frozen W: the same value and input gradient as `x.matmul(w)` (the same
/// operations), without computing W's gradient in the backward pass.
pub fn frozen_matmul(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    let y = x.detach().matmul(w)?;
    let w = w.clone();
    with_backward(
        x,
        &y,
        Box::new(move |_, grad| Ok(Some(grad.matmul(&w.t()?)?))),
    )
}

struct WithBackward(Box<Backward>);

/// A copy of `storage` under `layout`, contiguous: the custom op's value.
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

impl CustomOp2 for WithBackward {
    fn name(&self) -> &'static str {
        "zhiku-with-backward"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        value: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        copy_of(value, layout)
    }

    fn cuda_fwd(
        &self,
        _: &CudaStorage,
        _: &Layout,
        value: &CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        copy_of(value, layout)
    }

    fn metal_fwd(
        &self,
        _: &MetalStorage,
        _: &Layout,
        value: &MetalStorage,
        layout: &Layout,
    ) -> candle_core::Result<(MetalStorage, Shape)> {
        copy_of(value, layout)
    }

    fn bwd(
        &self,
        input: &Tensor,
        _value: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        Ok(((self.0)(input, grad_res)?, None))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

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
}
