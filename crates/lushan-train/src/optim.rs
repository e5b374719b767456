//! AdamW state over the flat parameter layout, and global-norm gradient clipping.

use lushan_kernels::{adamw::AdamW, reduce};
use lushan_model::{Gpt, ParamKind};

/// Both AdamW moments in the parameter layout, and the number of updates taken.
#[derive(Debug, Clone, PartialEq)]
pub struct AdamWState {
    pub m: Vec<f32>,
    pub v: Vec<f32>,
    pub step: u64,
}

/// The optimiser's hyper-parameters other than the learning rate (which the schedule sets per step).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OptimizerSettings {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl AdamWState {
    pub fn new(num_params: usize) -> Self {
        Self { m: vec![0.0; num_params], v: vec![0.0; num_params], step: 0 }
    }

    /// One update of every trainable tensor; weight decay only where [`ParamKind::decays`]. A model with
    /// LoRA adapters updates only them (every adapter tensor is a 2-D weight and decays), in their layout.
    pub fn update(&mut self, model: &mut Gpt, grads: &[f32], lr: f32, s: &OptimizerSettings) {
        self.step += 1;
        if let Some(lora) = model.lora.as_mut() {
            for entry in lora.layout.entries() {
                let r = entry.range;
                let hp = AdamW {
                    lr,
                    beta1: s.beta1,
                    beta2: s.beta2,
                    eps: s.eps,
                    weight_decay: if entry.slot.decays() { s.weight_decay } else { 0.0 },
                };
                hp.update(
                    &mut lora.params[r.clone()],
                    &grads[r.clone()],
                    &mut self.m[r.clone()],
                    &mut self.v[r],
                    self.step,
                );
            }
            return;
        }
        for kind in ParamKind::ALL {
            if !model.trainable(kind) {
                continue;
            }
            let r = model.layout.range(kind);
            let hp = AdamW {
                lr,
                beta1: s.beta1,
                beta2: s.beta2,
                eps: s.eps,
                weight_decay: if kind.decays() { s.weight_decay } else { 0.0 },
            };
            hp.update(
                &mut model.params[r.clone()],
                &grads[r.clone()],
                &mut self.m[r.clone()],
                &mut self.v[r],
                self.step,
            );
        }
    }
}

/// Scales `grads` so their global L2 norm is at most `max_norm`, as `torch.nn.utils.clip_grad_norm_` does
/// (factor `max_norm / (norm + 1e-6)` when below 1). Returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut [f32], max_norm: f32) -> f32 {
    let norm = reduce::sum_of_squares(grads).sqrt() as f32;
    if max_norm > 0.0 {
        let factor = max_norm / (norm + 1e-6);
        if factor < 1.0 {
            reduce::scale(grads, factor);
        }
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clipping_matches_torch_rule() {
        let mut g = vec![3.0, 4.0];
        let norm = clip_grad_norm(&mut g, 1.0);
        assert!((norm - 5.0).abs() < 1e-6);
        assert!((g[0] - 3.0 / (5.0 + 1e-6)).abs() < 1e-6);
        let mut small = vec![0.3, 0.4];
        clip_grad_norm(&mut small, 1.0);
        assert_eq!(small, vec![0.3, 0.4]);
    }
}
