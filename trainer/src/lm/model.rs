//! The burn module of [`super::LmConfig`], its seeded initialisation and its named tensors.

use burn::module::{Module, Param};
use burn::nn::{LayerNorm, Linear};
use burn::prelude::Backend;
use burn::tensor::activation::{gelu, softmax};
use burn::tensor::{Bool, Int, Tensor};
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

use super::LmConfig;
use crate::model::param;

/// One pre-norm block: `x + attn(ln1(x))`, then `x + mlp(ln2(x))`.
#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    /// Before attention.
    pub ln1: LayerNorm<B>,
    /// Queries, keys and values in one product (`width → 3 width`).
    pub qkv: Linear<B>,
    /// The heads' output projection.
    pub proj: Linear<B>,
    /// Before the MLP.
    pub ln2: LayerNorm<B>,
    /// The MLP's first layer (`width → 4 width`, GELU after).
    pub fc: Linear<B>,
    /// The MLP's second layer.
    pub out: Linear<B>,
}

/// A causal transformer language model.
#[derive(Module, Debug)]
pub struct Lm<B: Backend> {
    /// Token embedding `[vocab, width]`, also the output head (tied).
    pub tok: Param<Tensor<B, 2>>,
    /// Learned positions `[context, width]`.
    pub pos: Param<Tensor<B, 2>>,
    /// The blocks.
    pub blocks: Vec<Block<B>>,
    /// The final layer norm.
    pub ln_f: LayerNorm<B>,
    /// Attention heads per block.
    pub heads: usize,
}

/// Normal samples from a seeded stream (Box–Muller on 24-bit uniforms: the same bits on
/// every machine).
struct Normal(ChaCha8Rng);

impl Normal {
    fn uniform(&mut self) -> f64 {
        // In (0, 1]: never 0, so the logarithm is finite.
        ((self.0.next_u32() >> 8) as f64 + 1.0) / (1u32 << 24) as f64
    }

    fn take(&mut self, n: usize, std: f64) -> Vec<f32> {
        (0..n)
            .map(|_| {
                let (u, v) = (self.uniform(), self.uniform());
                let z = (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos();
                (z * std) as f32
            })
            .collect()
    }
}

fn layer_norm<B: Backend>(d: usize, device: &B::Device) -> LayerNorm<B> {
    let mut ln = burn::nn::LayerNormConfig::new(d).init(device);
    ln.gamma = param(vec![1.0; d], [d], device);
    ln.beta = Some(param(vec![0.0; d], [d], device));
    ln
}

fn linear<B: Backend>(
    rng: &mut Normal,
    n_in: usize,
    n_out: usize,
    std: f64,
    device: &B::Device,
) -> Linear<B> {
    Linear {
        weight: param(rng.take(n_in * n_out, std), [n_in, n_out], device),
        bias: Some(param(vec![0.0; n_out], [n_out], device)),
    }
}

impl<B: Backend> Lm<B> {
    /// A model of shape `c` (checked first), initialised from `seed` as nanoGPT does: normal
    /// weights with standard deviation 0.02 (the residual projections 0.02 / √(2 layers)),
    /// zero biases, unit layer norms.
    pub fn new(
        c: &LmConfig,
        seed: u64,
        device: &B::Device,
    ) -> Result<Lm<B>, crate::error::TrainError> {
        c.check()
            .map_err(|e| crate::error::TrainError::Options(e.to_string()))?;
        let mut rng = Normal(ChaCha8Rng::seed_from_u64(seed));
        let d = c.width;
        let residual = 0.02 / ((2 * c.layers) as f64).sqrt();
        let tok = param(rng.take(c.vocab * d, 0.02), [c.vocab, d], device);
        let pos = param(rng.take(c.context * d, 0.02), [c.context, d], device);
        let blocks = (0..c.layers)
            .map(|_| Block {
                ln1: layer_norm(d, device),
                qkv: linear(&mut rng, d, 3 * d, 0.02, device),
                proj: linear(&mut rng, d, d, residual, device),
                ln2: layer_norm(d, device),
                fc: linear(&mut rng, d, 4 * d, 0.02, device),
                out: linear(&mut rng, 4 * d, d, residual, device),
            })
            .collect();
        Ok(Lm {
            tok,
            pos,
            blocks,
            ln_f: layer_norm(d, device),
            heads: c.heads,
        })
    }

    /// The shape of this model.
    pub fn config(&self) -> LmConfig {
        let [vocab, width] = self.tok.val().dims();
        LmConfig {
            vocab,
            context: self.pos.val().dims()[0],
            layers: self.blocks.len(),
            heads: self.heads,
            width,
        }
    }

    /// Next-token logits `[batch, t, vocab]` for tokens `[batch, t]` (`t` ≤ the context).
    pub fn forward(&self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let [b, t] = tokens.dims();
        let device = tokens.device();
        let tok = self.tok.val();
        let [vocab, d] = tok.dims();
        let x = burn::tensor::module::embedding(tok.clone(), tokens);
        let pos = self.pos.val().slice([0..t, 0..d]).unsqueeze::<3>();
        let mut x = x + pos;
        let mask = causal_mask::<B>(t, &device);
        for block in &self.blocks {
            x = block.forward(x, self.heads, mask.clone());
        }
        let x = self.ln_f.forward(x);
        x.reshape([b * t, d])
            .matmul(tok.transpose())
            .reshape([b, t, vocab])
    }
}

/// `[1, 1, t, t]`, true above the diagonal (a position may not attend to later ones).
fn causal_mask<B: Backend>(t: usize, device: &B::Device) -> Tensor<B, 4, Bool> {
    Tensor::<B, 2, Int>::ones([t, t], device)
        .triu(1)
        .bool()
        .unsqueeze::<4>()
}

impl<B: Backend> Block<B> {
    fn forward(&self, x: Tensor<B, 3>, heads: usize, mask: Tensor<B, 4, Bool>) -> Tensor<B, 3> {
        let x = x.clone() + self.attention(self.ln1.forward(x), heads, mask);
        let h = gelu(self.fc.forward(self.ln2.forward(x.clone())));
        x + self.out.forward(h)
    }

    fn attention(&self, x: Tensor<B, 3>, heads: usize, mask: Tensor<B, 4, Bool>) -> Tensor<B, 3> {
        let [b, t, d] = x.dims();
        let hd = d / heads;
        let qkv = self.qkv.forward(x);
        let split = |i: usize| {
            qkv.clone()
                .slice([0..b, 0..t, i * d..(i + 1) * d])
                .reshape([b, t, heads, hd])
                .swap_dims(1, 2)
        };
        let (q, k, v) = (split(0), split(1), split(2));
        let scores = q.matmul(k.swap_dims(2, 3)) * (1.0 / (hd as f64).sqrt());
        let scores = scores.mask_fill(mask.expand([b, heads, t, t]), f32::NEG_INFINITY);
        let y = softmax(scores, 3).matmul(v);
        self.proj.forward(y.swap_dims(1, 2).reshape([b, t, d]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Cpu;
    use burn::tensor::TensorData;

    fn tokens(v: &[i64], b: usize) -> Tensor<Cpu, 2, Int> {
        Tensor::from_data(
            TensorData::new(v.to_vec(), [b, v.len() / b]),
            &Default::default(),
        )
    }

    #[test]
    fn logits_have_the_shape_and_do_not_see_later_tokens() {
        let c = LmConfig {
            vocab: 11,
            context: 8,
            layers: 2,
            heads: 2,
            width: 16,
        };
        let m = Lm::<Cpu>::new(&c, 7, &Default::default()).expect("valid");
        assert_eq!(m.config(), c);
        let a = m.forward(tokens(&[1, 2, 3, 4, 5, 6], 1));
        assert_eq!(a.dims(), [1, 6, 11]);
        // Change the last token: the logits at earlier positions stay, the last ones move.
        let b = m.forward(tokens(&[1, 2, 3, 4, 5, 9], 1));
        let (a, b): (Vec<f32>, Vec<f32>) = (
            a.into_data().to_vec().expect("f32"),
            b.into_data().to_vec().expect("f32"),
        );
        assert_eq!(a[..5 * 11], b[..5 * 11]);
        assert_ne!(a[5 * 11..], b[5 * 11..]);
        // The parameter count is the config's.
        assert_eq!(m.num_params() as u64, c.params());
    }

    #[test]
    fn the_same_seed_gives_the_same_model() {
        let c = LmConfig::small(20);
        let d = Default::default();
        let x = |s| {
            Lm::<Cpu>::new(&c, s, &d)
                .expect("valid")
                .forward(tokens(&[3; 64], 1))
                .into_data()
                .to_vec::<f32>()
                .expect("f32")
        };
        assert_eq!(x(1), x(1));
        assert_ne!(x(1), x(2));
    }
}
