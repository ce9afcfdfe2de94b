//! The layer operations a [`Model`](crate::model::Model) needs from its backend.
//!
//! On the CPU backend, convolution and max pooling run the kernels in [`crate::kernels`]
//! (im2col + GEMM; argmax routing), with their own autodiff backward passes: burn-ndarray's
//! built-in convolution and pooling (and their backward passes) measured 10–100x slower than
//! PyTorch on the CNNs we train. On CUDA they are burn's own kernels. Both compute the same
//! functions (cross-correlation with "same" zero padding; first maximum on ties).

use std::borrow::Cow;
use std::marker::PhantomData;
use std::sync::Arc;

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::ndarray::NdArrayTensor;
use burn::prelude::Backend;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorPrimitive, activation};

use ndarray::{ArcArray, IxDyn};

use crate::Cpu;
use crate::kernels::{self, ConvDims, DenseDims, NormDims, NormStats};
use crate::optim::{AdamStep, adam_update_tensors};

/// A backend a model can run on.
pub trait ModelBackend: Backend {
    /// Stride-1 convolution with "same" zero padding (`k / 2`, odd `k`) and bias:
    /// `x` `[b, c, h, w]`, `weight` `[o, c, k, k]`, `bias` `[o]` → `[b, o, h, w]`.
    /// With `relu`, ReLU follows in the same pass (the model fuses a convolution whose only
    /// reader is a ReLU).
    fn conv_same(
        x: Tensor<Self, 4>,
        weight: Tensor<Self, 4>,
        bias: Tensor<Self, 1>,
        relu: bool,
    ) -> Tensor<Self, 4>;
    /// A dense layer `x · weight + bias` (`x` `[b, i]`, `weight` `[i, o]` as burn's
    /// `Linear`), then ReLU when `relu`. By default burn tensor operations.
    fn dense(
        x: Tensor<Self, 2>,
        weight: Tensor<Self, 2>,
        bias: Tensor<Self, 1>,
        relu: bool,
    ) -> Tensor<Self, 2> {
        let y = x.matmul(weight) + bias.unsqueeze::<2>();
        relu_if(y, relu)
    }
    /// `k×k` max pooling with stride `k`, no padding, floor mode.
    fn max_pool(x: Tensor<Self, 4>, k: usize) -> Tensor<Self, 4>;
    /// Batch normalisation with the batch's own statistics (training mode) of `x`
    /// `[b, c, h, w]` per channel, scaled by `gamma` and shifted by `beta` (`[c]`), then ReLU
    /// when `relu`: `(y, mean, var)` with the batch's mean and biased variance `[c]`, detached
    /// (for the running averages). By default burn tensor operations in the order of burn's
    /// own `BatchNorm`.
    fn batch_norm_train(
        x: Tensor<Self, 4>,
        gamma: Tensor<Self, 1>,
        beta: Tensor<Self, 1>,
        epsilon: f64,
        relu: bool,
    ) -> (Tensor<Self, 4>, Tensor<Self, 1>, Tensor<Self, 1>) {
        let [b, c, h, w] = x.dims();
        let stat = |t: Tensor<Self, 4>| {
            t.swap_dims(0, 1)
                .reshape([c, b * h * w])
                .mean_dim(1)
                .reshape([1, c, 1, 1])
        };
        let mean = stat(x.clone());
        let var = stat(x.clone().sub(mean.clone()).square());
        let std = var.clone().add_scalar(epsilon).sqrt();
        let y = x
            .sub(mean.clone())
            .div(std)
            .mul(gamma.reshape([1, c, 1, 1]))
            .add(beta.reshape([1, c, 1, 1]));
        (
            relu_if(y, relu),
            mean.detach().reshape([c]),
            var.detach().reshape([c]),
        )
    }
    /// One Adam update of `param` (see [`crate::optim`]): the new parameter and moments.
    /// `moments` is `None` on the first step. By default burn tensor operations.
    fn adam_update<const D: usize>(
        param: Tensor<Self, D>,
        grad: Tensor<Self, D>,
        moments: Option<(Tensor<Self, D>, Tensor<Self, D>)>,
        step: &AdamStep,
    ) -> (Tensor<Self, D>, Tensor<Self, D>, Tensor<Self, D>) {
        adam_update_tensors(param, grad, moments, step)
    }
}

/// `y`, through a ReLU when `relu` (a layer whose ReLU was fused into it, computed by burn's
/// tensor operations).
pub(crate) fn relu_if<B: Backend, const D: usize>(y: Tensor<B, D>, relu: bool) -> Tensor<B, D> {
    if relu { activation::relu(y) } else { y }
}

/// A backend a model can be trained on: autodiff over a [`ModelBackend`].
pub trait TrainBackend: AutodiffBackend<InnerBackend: ModelBackend> + ModelBackend {}

impl<T: AutodiffBackend<InnerBackend: ModelBackend> + ModelBackend> TrainBackend for T {}

fn dims(x: [usize; 4], weight: [usize; 4]) -> ConvDims {
    ConvDims {
        b: x[0],
        c: x[1],
        h: x[2],
        w: x[3],
        o: weight[0],
        k: weight[2],
    }
}

/// The values of a CPU tensor in row-major order, borrowed when its storage is already laid
/// out that way. (burn's `into_data` copies element by element whenever the array is shared,
/// which autodiff's saved activations always are: it cost more than the convolutions.)
fn host(p: &FloatTensor<Cpu>) -> Cow<'_, [f32]> {
    match p {
        NdArrayTensor::F32(storage) => {
            let view = storage.view();
            match view.to_slice() {
                Some(s) => Cow::Borrowed(s),
                None => Cow::Owned(view.iter().copied().collect()),
            }
        }
        other => {
            let data =
                Tensor::<Cpu, 1>::from_primitive(TensorPrimitive::Float(other.clone())).into_data();
            Cow::Owned(data.iter::<f32>().collect())
        }
    }
}

/// A CPU tensor owning `values` (no copy).
fn cpu(values: Vec<f32>, shape: &[usize]) -> FloatTensor<Cpu> {
    match ArcArray::from_shape_vec(IxDyn(shape), values) {
        Ok(a) => NdArrayTensor::from(a),
        Err(e) => unreachable!("kernel outputs are sized from their shapes: {e}"),
    }
}

fn dense_dims(x: [usize; 2], weight: [usize; 2]) -> DenseDims {
    DenseDims {
        b: x[0],
        i: x[1],
        o: weight[1],
    }
}

/// A layer our kernels compute, with weights, a bias and an optionally fused ReLU: a
/// convolution or a dense layer, described by its sizes.
trait Layer: Copy + std::fmt::Debug + Send + Sync + 'static {
    /// The input's (and its gradient's) shape.
    fn x_shape(&self) -> Vec<usize>;
    /// The weight's shape.
    fn w_shape(&self) -> Vec<usize>;
    /// The bias's length.
    fn b_len(&self) -> usize;
    /// The output's shape.
    fn y_shape(&self) -> Vec<usize>;
    /// The output (see the kernels).
    fn forward(&self, x: &[f32], w: &[f32], b: &[f32], relu: bool) -> Vec<f32>;
    /// `(gx, gw, gb)`, `gx` empty unless `want_x` (see the kernels).
    fn backward(
        &self,
        x: &[f32],
        w: &[f32],
        gy: &[f32],
        relu_out: Option<&[f32]>,
        want_x: bool,
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>);
}

impl Layer for ConvDims {
    fn x_shape(&self) -> Vec<usize> {
        vec![self.b, self.c, self.h, self.w]
    }
    fn w_shape(&self) -> Vec<usize> {
        vec![self.o, self.c, self.k, self.k]
    }
    fn b_len(&self) -> usize {
        self.o
    }
    fn y_shape(&self) -> Vec<usize> {
        vec![self.b, self.o, self.h, self.w]
    }
    fn forward(&self, x: &[f32], w: &[f32], b: &[f32], relu: bool) -> Vec<f32> {
        kernels::conv_forward(x, w, b, self, relu)
    }
    fn backward(
        &self,
        x: &[f32],
        w: &[f32],
        gy: &[f32],
        relu_out: Option<&[f32]>,
        want_x: bool,
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        kernels::conv_backward(x, w, gy, relu_out, self, want_x)
    }
}

impl Layer for DenseDims {
    fn x_shape(&self) -> Vec<usize> {
        vec![self.b, self.i]
    }
    fn w_shape(&self) -> Vec<usize> {
        vec![self.i, self.o]
    }
    fn b_len(&self) -> usize {
        self.o
    }
    fn y_shape(&self) -> Vec<usize> {
        vec![self.b, self.o]
    }
    fn forward(&self, x: &[f32], w: &[f32], b: &[f32], relu: bool) -> Vec<f32> {
        kernels::dense_forward(x, w, b, self, relu)
    }
    fn backward(
        &self,
        x: &[f32],
        w: &[f32],
        gy: &[f32],
        relu_out: Option<&[f32]>,
        want_x: bool,
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        kernels::dense_backward(x, w, gy, relu_out, self, want_x)
    }
}

/// A layer's output from CPU tensors.
fn layer_cpu<L: Layer>(
    x: &FloatTensor<Cpu>,
    weight: &FloatTensor<Cpu>,
    bias: &FloatTensor<Cpu>,
    d: &L,
    relu: bool,
) -> FloatTensor<Cpu> {
    let y = d.forward(&host(x), &host(weight), &host(bias), relu);
    cpu(y, &d.y_shape())
}

/// A layer on the CPU backend without autodiff (inference).
fn layer_plain<L: Layer, const D: usize, const DW: usize>(
    x: Tensor<Cpu, D>,
    weight: Tensor<Cpu, DW>,
    bias: Tensor<Cpu, 1>,
    d: L,
    relu: bool,
) -> Tensor<Cpu, D> {
    let (x, weight, bias) = (
        x.into_primitive().tensor(),
        weight.into_primitive().tensor(),
        bias.into_primitive().tensor(),
    );
    Tensor::from_primitive(TensorPrimitive::Float(layer_cpu(
        &x, &weight, &bias, &d, relu,
    )))
}

/// A layer under autodiff: our forward, and [`LayerOp`] as its backward when tracked.
fn layer_tracked<C: CheckpointStrategy, L: Layer, const D: usize, const DW: usize>(
    x: Tensor<Autodiff<Cpu, C>, D>,
    weight: Tensor<Autodiff<Cpu, C>, DW>,
    bias: Tensor<Autodiff<Cpu, C>, 1>,
    d: L,
    relu: bool,
) -> Tensor<Autodiff<Cpu, C>, D> {
    let (x, weight, bias) = (
        x.into_primitive().tensor(),
        weight.into_primitive().tensor(),
        bias.into_primitive().tensor(),
    );
    let y = layer_cpu(&x.primitive, &weight.primitive, &bias.primitive, &d, relu);
    let out = match LayerOp::<L>(PhantomData)
        .prepare::<C>([x.node.clone(), weight.node.clone(), bias.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(
            LayerSaved {
                x: x.primitive.clone(),
                weight: weight.primitive.clone(),
                relu_out: relu.then(|| y.clone()),
                dims: d,
            },
            y,
        ),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

impl ModelBackend for Cpu {
    fn conv_same(
        x: Tensor<Self, 4>,
        weight: Tensor<Self, 4>,
        bias: Tensor<Self, 1>,
        relu: bool,
    ) -> Tensor<Self, 4> {
        let d = dims(x.dims(), weight.dims());
        layer_plain(x, weight, bias, d, relu)
    }

    fn dense(
        x: Tensor<Self, 2>,
        weight: Tensor<Self, 2>,
        bias: Tensor<Self, 1>,
        relu: bool,
    ) -> Tensor<Self, 2> {
        let d = dense_dims(x.dims(), weight.dims());
        layer_plain(x, weight, bias, d, relu)
    }

    fn max_pool(x: Tensor<Self, 4>, k: usize) -> Tensor<Self, 4> {
        let [b, c, h, w] = x.dims();
        let x = x.into_primitive().tensor();
        let (y, _) = kernels::max_pool_forward(&host(&x), b * c, h, w, k);
        Tensor::from_primitive(TensorPrimitive::Float(cpu(y, &[b, c, h / k, w / k])))
    }

    fn adam_update<const D: usize>(
        param: Tensor<Self, D>,
        grad: Tensor<Self, D>,
        moments: Option<(Tensor<Self, D>, Tensor<Self, D>)>,
        step: &AdamStep,
    ) -> (Tensor<Self, D>, Tensor<Self, D>, Tensor<Self, D>) {
        let shape = param.dims();
        let n = param.shape().num_elements();
        let grad = grad.into_primitive().tensor();
        let mut p = owned(param.into_primitive().tensor(), &shape);
        let (mut m1, mut m2, first) = match moments {
            Some((m1, m2)) => (
                owned(m1.into_primitive().tensor(), &shape),
                owned(m2.into_primitive().tensor(), &shape),
                false,
            ),
            None => {
                let zeros = || ArcArray::zeros(IxDyn(&shape));
                (zeros(), zeros(), true)
            }
        };
        match (p.as_slice_mut(), m1.as_slice_mut(), m2.as_slice_mut()) {
            (Some(p), Some(m1), Some(m2)) if p.len() == n => {
                kernels::adam(p, &host(&grad), m1, m2, step, first);
            }
            _ => unreachable!("owned() returns arrays in standard layout"),
        }
        let back = |a: ArcArray<f32, IxDyn>| {
            Tensor::from_primitive(TensorPrimitive::Float(NdArrayTensor::from(a)))
        };
        (back(p), back(m1), back(m2))
    }
}

/// A CPU tensor's values as an array of its own in standard layout (no copy when it is
/// already one and unshared; copied on write otherwise).
fn owned(t: FloatTensor<Cpu>, shape: &[usize]) -> ArcArray<f32, IxDyn> {
    let a = match t {
        NdArrayTensor::F32(storage) => storage.into_owned(),
        other => match ArcArray::from_shape_vec(IxDyn(shape), host(&other).into_owned()) {
            Ok(a) => a,
            Err(e) => unreachable!("a tensor's values fill its shape: {e}"),
        },
    };
    if a.is_standard_layout() {
        a
    } else {
        a.as_standard_layout().into_owned().into_shared()
    }
}

/// What a layer's backward pass needs: its input and weight (shared, not copied), and its
/// output when a ReLU was fused into it.
#[derive(Clone, Debug)]
struct LayerSaved<L> {
    x: FloatTensor<Cpu>,
    weight: FloatTensor<Cpu>,
    relu_out: Option<FloatTensor<Cpu>>,
    dims: L,
}

/// The backward pass of a [`Layer`].
#[derive(Debug)]
struct LayerOp<L>(PhantomData<L>);

impl<L: Layer> Backward<Cpu, 3> for LayerOp<L> {
    type State = LayerSaved<L>;

    fn backward(self, ops: Ops<LayerSaved<L>, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_w, node_b] = ops.parents;
        let gy = grads.consume::<Cpu>(&ops.node);
        let s = ops.state;
        let d = s.dims;
        let relu_out = s.relu_out.as_ref().map(host);
        let (gx, gw, gb) = d.backward(
            &host(&s.x),
            &host(&s.weight),
            &host(&gy),
            relu_out.as_deref(),
            node_x.is_some(),
        );
        if let Some(node) = node_x {
            grads.register::<Cpu>(node.id, cpu(gx, &d.x_shape()));
        }
        if let Some(node) = node_w {
            grads.register::<Cpu>(node.id, cpu(gw, &d.w_shape()));
        }
        if let Some(node) = node_b {
            grads.register::<Cpu>(node.id, cpu(gb, &[d.b_len()]));
        }
    }
}

/// What max pooling's backward pass needs: where each output's maximum came from.
#[derive(Clone, Debug)]
struct PoolSaved {
    arg: Arc<Vec<u32>>,
    shape: [usize; 4],
}

#[derive(Debug)]
struct PoolOp;

impl Backward<Cpu, 1> for PoolOp {
    type State = PoolSaved;

    fn backward(self, ops: Ops<PoolSaved, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let gy = grads.consume::<Cpu>(&ops.node);
        if let Some(node) = node_x {
            let [b, c, h, w] = ops.state.shape;
            let gx = kernels::max_pool_backward(&host(&gy), &ops.state.arg, b * c, h * w);
            grads.register::<Cpu>(node.id, cpu(gx, &[b, c, h, w]));
        }
    }
}

/// What batch norm's backward pass needs: its input (shared, not copied) and the batch's
/// statistics.
#[derive(Clone, Debug)]
struct NormSaved {
    x: FloatTensor<Cpu>,
    stats: Arc<NormStats>,
    dims: NormDims,
    relu: bool,
}

/// The backward pass of [`kernels::norm_forward`].
#[derive(Debug)]
struct NormOp;

impl Backward<Cpu, 3> for NormOp {
    type State = NormSaved;

    fn backward(self, ops: Ops<NormSaved, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_g, node_b] = ops.parents;
        let gy = grads.consume::<Cpu>(&ops.node);
        let s = ops.state;
        let d = s.dims;
        let (gx, gg, gb) = kernels::norm_backward(
            &host(&s.x),
            &host(&gy),
            &s.stats,
            &d,
            s.relu,
            node_x.is_some(),
        );
        if let Some(node) = node_x {
            grads.register::<Cpu>(node.id, cpu(gx, &[d.b, d.c, d.hw]));
        }
        if let Some(node) = node_g {
            grads.register::<Cpu>(node.id, cpu(gg, &[d.c]));
        }
        if let Some(node) = node_b {
            grads.register::<Cpu>(node.id, cpu(gb, &[d.c]));
        }
    }
}

impl<C: CheckpointStrategy> ModelBackend for Autodiff<Cpu, C> {
    fn conv_same(
        x: Tensor<Self, 4>,
        weight: Tensor<Self, 4>,
        bias: Tensor<Self, 1>,
        relu: bool,
    ) -> Tensor<Self, 4> {
        let d = dims(x.dims(), weight.dims());
        layer_tracked(x, weight, bias, d, relu)
    }

    fn dense(
        x: Tensor<Self, 2>,
        weight: Tensor<Self, 2>,
        bias: Tensor<Self, 1>,
        relu: bool,
    ) -> Tensor<Self, 2> {
        let d = dense_dims(x.dims(), weight.dims());
        layer_tracked(x, weight, bias, d, relu)
    }

    fn batch_norm_train(
        x: Tensor<Self, 4>,
        gamma: Tensor<Self, 1>,
        beta: Tensor<Self, 1>,
        epsilon: f64,
        relu: bool,
    ) -> (Tensor<Self, 4>, Tensor<Self, 1>, Tensor<Self, 1>) {
        let shape = x.dims();
        let [b, c, h, w] = shape;
        let d = NormDims { b, c, hw: h * w };
        let (x, gamma, beta) = (
            x.into_primitive().tensor(),
            gamma.into_primitive().tensor(),
            beta.into_primitive().tensor(),
        );
        let xs = host(&x.primitive);
        let g = (host(&gamma.primitive), host(&beta.primitive));
        let stats = kernels::norm_stats(&xs, &g.0, &g.1, epsilon as f32, &d);
        let y = cpu(kernels::norm_forward(&xs, &stats, &d, relu), &shape);
        drop(xs);
        let plain = |v: &[f32]| {
            Tensor::from_inner(Tensor::<Cpu, 1>::from_primitive(TensorPrimitive::Float(
                cpu(v.to_vec(), &[c]),
            )))
        };
        let (mean, var) = (plain(&stats.mean), plain(&stats.var));
        let out = match NormOp
            .prepare::<C>([x.node.clone(), gamma.node.clone(), beta.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(
                NormSaved {
                    x: x.primitive.clone(),
                    stats: Arc::new(stats),
                    dims: d,
                    relu,
                },
                y,
            ),
            OpsKind::UnTracked(prep) => prep.finish(y),
        };
        (
            Tensor::from_primitive(TensorPrimitive::Float(out)),
            mean,
            var,
        )
    }

    fn max_pool(x: Tensor<Self, 4>, k: usize) -> Tensor<Self, 4> {
        let shape = x.dims();
        let [b, c, h, w] = shape;
        let x = x.into_primitive().tensor();
        let (y, arg) = kernels::max_pool_forward(&host(&x.primitive), b * c, h, w, k);
        let y = cpu(y, &[b, c, h / k, w / k]);
        let out = match PoolOp
            .prepare::<C>([x.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(
                PoolSaved {
                    arg: Arc::new(arg),
                    shape,
                },
                y,
            ),
            OpsKind::UnTracked(prep) => prep.finish(y),
        };
        Tensor::from_primitive(TensorPrimitive::Float(out))
    }
}

/// burn's own convolution and pooling, for backends with fast native kernels (CUDA).
#[cfg(feature = "cuda")]
mod native {
    use burn::tensor::module::{conv2d, max_pool2d};
    use burn::tensor::ops::ConvOptions;

    use super::*;

    pub(super) fn conv_same<B: Backend>(
        x: Tensor<B, 4>,
        weight: Tensor<B, 4>,
        bias: Tensor<B, 1>,
        relu: bool,
    ) -> Tensor<B, 4> {
        let p = weight.dims()[2] / 2;
        let y = conv2d(
            x,
            weight,
            Some(bias),
            ConvOptions::new([1, 1], [p, p], [1, 1], 1),
        );
        if relu { activation::relu(y) } else { y }
    }

    pub(super) fn max_pool<B: Backend>(x: Tensor<B, 4>, k: usize) -> Tensor<B, 4> {
        max_pool2d(x, [k, k], [k, k], [0, 0], [1, 1], false)
    }

    impl ModelBackend for burn::backend::Cuda {
        fn conv_same(
            x: Tensor<Self, 4>,
            w: Tensor<Self, 4>,
            b: Tensor<Self, 1>,
            relu: bool,
        ) -> Tensor<Self, 4> {
            conv_same(x, w, b, relu)
        }
        fn max_pool(x: Tensor<Self, 4>, k: usize) -> Tensor<Self, 4> {
            max_pool(x, k)
        }
    }

    impl<C: CheckpointStrategy> ModelBackend for Autodiff<burn::backend::Cuda, C> {
        fn conv_same(
            x: Tensor<Self, 4>,
            w: Tensor<Self, 4>,
            b: Tensor<Self, 1>,
            relu: bool,
        ) -> Tensor<Self, 4> {
            conv_same(x, w, b, relu)
        }
        fn max_pool(x: Tensor<Self, 4>, k: usize) -> Tensor<Self, 4> {
            max_pool(x, k)
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::TensorData;
    use burn::tensor::module::{conv2d, max_pool2d};
    use burn::tensor::ops::ConvOptions;
    use rand_chacha::ChaCha8Rng;
    use rand_core::{Rng, SeedableRng};

    use super::*;
    use crate::CpuAutodiff;

    fn random<B: Backend, const D: usize>(shape: [usize; D], rng: &mut ChaCha8Rng) -> Tensor<B, D> {
        let n = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|_| (rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0)
            .collect();
        Tensor::from_data(TensorData::new(v, shape), &Default::default())
    }

    fn assert_close<const D: usize>(a: Tensor<Cpu, D>, b: Tensor<Cpu, D>, what: &str) {
        let (a, b) = (a.into_data().to_vec::<f32>(), b.into_data().to_vec::<f32>());
        let (a, b) = (a.unwrap_or_default(), b.unwrap_or_default());
        assert_eq!(a.len(), b.len(), "{what}");
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!(
                (x - y).abs() <= 1e-4 * (1.0 + y.abs()),
                "{what} at {i}: {x} vs {y}"
            );
        }
    }

    /// Our forward and backward passes equal burn's own conv2d and max_pool2d under autodiff
    /// (up to float rounding order), through a small network with a loss that weights every
    /// output differently.
    #[test]
    fn gradients_match_burns_own_layers() {
        for relu in [false, true] {
            // Kernels smaller and larger than the image; patches cut into bands (56×50), and
            // at 40×40 the 2 input channels' patches alone would fit whole, the 4 output
            // channels' (the input gradient's) would not.
            let cases = [
                (3, 7, 6),
                (5, 7, 6),
                (5, 2, 3),
                (1, 4, 2),
                (5, 56, 50),
                (5, 40, 40),
            ];
            for (k, h, w) in cases {
                conv_and_pool_match_burns_own(relu, k, [h, w]);
            }
            dense_matches_burns_own(relu);
        }
    }

    /// Our dense layer (with its ReLU fused or not) against burn's matmul + bias (+ ReLU).
    fn dense_matches_burns_own(relu: bool) {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        type A = CpuAutodiff;
        // 37 samples and 41 inputs: pieces of 16 rows and a ragged last piece.
        let x = random::<A, 2>([37, 41], &mut rng);
        let w = random::<A, 2>([41, 19], &mut rng);
        let b = random::<A, 1>([19], &mut rng);
        let mix = random::<A, 2>([37, 19], &mut rng);
        let run = |ours: bool| {
            let (x, w, b) = (
                x.clone().require_grad(),
                w.clone().require_grad(),
                b.clone().require_grad(),
            );
            let y = if ours {
                A::dense(x.clone(), w.clone(), b.clone(), relu)
            } else {
                let y = x.clone().matmul(w.clone()) + b.clone().unsqueeze::<2>();
                if relu { activation::relu(y) } else { y }
            };
            let g = (y.clone() * mix.clone()).sum().backward();
            let grad = |t: &Tensor<A, 2>| t.grad(&g).expect("has a gradient");
            (y.inner(), grad(&x), grad(&w), b.grad(&g).expect("bias"))
        };
        let (y1, gx1, gw1, gb1) = run(true);
        let (y2, gx2, gw2, gb2) = run(false);
        assert_close(y1, y2, "dense output");
        assert_close(gx1, gx2, "dense input gradient");
        assert_close(gw1, gw2, "dense weight gradient");
        assert_close(gb1, gb2, "dense bias gradient");
    }

    fn conv_and_pool_match_burns_own(relu: bool, k: usize, [h, wd]: [usize; 2]) {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        type A = CpuAutodiff;
        let x = random::<A, 4>([3, 2, h, wd], &mut rng);
        let w = random::<A, 4>([4, 2, k, k], &mut rng);
        let b = random::<A, 1>([4], &mut rng);
        let mix = random::<A, 4>([3, 4, h / 2, wd / 2], &mut rng);
        let run = |ours: bool| {
            let (x, w, b) = (
                x.clone().require_grad(),
                w.clone().require_grad(),
                b.clone().require_grad(),
            );
            let y = if ours {
                A::max_pool(A::conv_same(x.clone(), w.clone(), b.clone(), relu), 2)
            } else {
                let c = conv2d(
                    x.clone(),
                    w.clone(),
                    Some(b.clone()),
                    ConvOptions::new([1, 1], [k / 2, k / 2], [1, 1], 1),
                );
                let c = if relu { activation::relu(c) } else { c };
                max_pool2d(c, [2, 2], [2, 2], [0, 0], [1, 1], false)
            };
            let loss = (y.clone() * mix.clone()).sum();
            let g = loss.backward();
            let grad = |t: &Tensor<A, 4>| t.grad(&g).expect("has a gradient");
            (
                y.inner(),
                grad(&x),
                grad(&w),
                b.grad(&g).expect("bias gradient"),
            )
        };
        let (y1, gx1, gw1, gb1) = run(true);
        let (y2, gx2, gw2, gb2) = run(false);
        assert_close(y1, y2, "output");
        assert_close(gx1, gx2, "input gradient");
        assert_close(gw1, gw2, "weight gradient");
        assert_close(gb1, gb2, "bias gradient");
    }

    #[test]
    fn inference_and_training_forward_passes_agree() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let x = random::<CpuAutodiff, 4>([2, 3, 5, 5], &mut rng);
        let w = random::<CpuAutodiff, 4>([2, 3, 5, 5], &mut rng);
        let b = random::<CpuAutodiff, 1>([2], &mut rng);
        let train = CpuAutodiff::conv_same(x.clone(), w.clone(), b.clone(), true).inner();
        let infer = Cpu::conv_same(x.inner(), w.inner(), b.inner(), true);
        assert_eq!(train.into_data(), infer.into_data());
    }
}
