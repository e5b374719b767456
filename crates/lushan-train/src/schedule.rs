//! Learning-rate schedule: linear warm-up, then cosine decay to a floor (nanoGPT's `get_lr`).

/// Settings of the schedule; `decay == false` keeps the rate constant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrSchedule {
    pub learning_rate: f32,
    pub min_lr: f32,
    pub warmup_iters: u64,
    pub lr_decay_iters: u64,
    pub decay: bool,
}

impl LrSchedule {
    /// Learning rate of update number `it` (0-based).
    pub fn at(&self, it: u64) -> f32 {
        if !self.decay {
            return self.learning_rate;
        }
        if it < self.warmup_iters {
            return self.learning_rate * (it + 1) as f32 / (self.warmup_iters + 1) as f32;
        }
        if it > self.lr_decay_iters {
            return self.min_lr;
        }
        let span = self.lr_decay_iters.saturating_sub(self.warmup_iters).max(1);
        let ratio = (it - self.warmup_iters) as f64 / span as f64;
        let coeff = 0.5 * (1.0 + (std::f64::consts::PI * ratio).cos());
        (self.min_lr as f64 + coeff * (self.learning_rate - self.min_lr) as f64) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine_to_floor() {
        let s = LrSchedule { learning_rate: 1e-3, min_lr: 1e-4, warmup_iters: 100, lr_decay_iters: 2000, decay: true };
        assert!((s.at(0) - 1e-3 / 101.0).abs() < 1e-9);
        assert!((s.at(99) - 1e-3 * 100.0 / 101.0).abs() < 1e-9);
        assert!((s.at(100) - 1e-3).abs() < 1e-9);
        assert!((s.at(1050) - 5.5e-4).abs() < 1e-7);
        assert!((s.at(2000) - 1e-4).abs() < 1e-9);
        assert_eq!(s.at(5000), 1e-4);
        let flat = LrSchedule { decay: false, ..s };
        assert_eq!(flat.at(0), 1e-3);
    }
}
