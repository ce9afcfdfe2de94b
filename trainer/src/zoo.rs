//! Reference architectures as IR: the fixed models of loss-function search, the teachers of
//! distillation, and the models benchmarked against PyTorch (`benches/pytorch_mnist.py`
//! defines the same two).

use hivemesh_evolve::arch::{Activation, Architecture, Node, Op, Shape};

pub(crate) fn chain(input: Shape, classes: u32, ops: &[Op]) -> Architecture {
    let mut nodes = vec![Node {
        op: Op::Input,
        inputs: vec![],
    }];
    for (i, op) in ops.iter().enumerate() {
        nodes.push(Node {
            op: *op,
            inputs: vec![i as u32],
        });
    }
    Architecture {
        input,
        classes,
        nodes,
    }
}

/// Flatten → Dense(hidden) → ReLU → Dense(classes): for MNIST, the 784-128-10 MLP.
pub fn mlp(input: Shape, hidden: u32, classes: u32) -> Architecture {
    let mut ops = vec![];
    if matches!(input, Shape::Image { .. }) {
        ops.push(Op::Flatten);
    }
    ops.extend([
        Op::Dense { out: hidden },
        Op::Act(Activation::Relu),
        Op::Dense { out: classes },
    ]);
    chain(input, classes, &ops)
}

/// A linear classifier (a flatten if the samples are images, then one dense layer): what
/// DP training on fixed features such as [`crate::scatter`]'s uses.
pub fn linear(input: Shape, classes: u32) -> Architecture {
    let mut ops = vec![];
    if matches!(input, Shape::Image { .. }) {
        ops.push(Op::Flatten);
    }
    ops.push(Op::Dense { out: classes });
    chain(input, classes, &ops)
}

/// A small CNN: Conv 3x3 (32) → ReLU → MaxPool 2 → Conv 3x3 (64) → ReLU → MaxPool 2 →
/// Flatten → Dense 128 → ReLU → Dense(classes). On 28x28 MNIST: 421,642 parameters.
pub fn small_cnn(input: Shape, classes: u32) -> Architecture {
    let relu = Op::Act(Activation::Relu);
    chain(
        input,
        classes,
        &[
            Op::Conv { out: 32, kernel: 3 },
            relu,
            Op::MaxPool { kernel: 2 },
            Op::Conv { out: 64, kernel: 3 },
            relu,
            Op::MaxPool { kernel: 2 },
            Op::Flatten,
            Op::Dense { out: 128 },
            relu,
            Op::Dense { out: classes },
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_models_are_valid_with_the_documented_sizes() {
        let mnist = Shape::Image { c: 1, h: 28, w: 28 };
        assert_eq!(mlp(mnist, 128, 10).params(), Ok(784 * 128 + 128 + 1290));
        assert_eq!(small_cnn(mnist, 10).params(), Ok(421_642));
    }
}
