//! Optimizers with PyTorch's update rules (Adam, AdamW, SGD, RAdam) and state that is saved by
//! parameter path, so that a resumed run continues bit for bit.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", deny_unknown_fields)]
pub enum OptimizerConfig {
    /// Adam; `weight_decay` is an L2 term added to the gradient.
    Adam {
        #[serde(default = "paper_betas")]
        betas: (f64, f64),
        #[serde(default = "default_eps")]
        eps: f64,
        #[serde(default)]
        weight_decay: f64,
    },
    /// Adam with decoupled weight decay (`p <- p (1 - lr wd)`).
    #[serde(rename = "adamw")]
    AdamW {
        #[serde(default = "paper_betas")]
        betas: (f64, f64),
        #[serde(default = "default_eps")]
        eps: f64,
        #[serde(default = "default_adamw_decay")]
        weight_decay: f64,
    },
    /// SGD with optional heavy-ball momentum (PyTorch's form: `buf = m buf + g; p -= lr buf`).
    Sgd {
        #[serde(default)]
        momentum: f64,
        #[serde(default)]
        weight_decay: f64,
    },
    /// Rectified Adam (Liu et al. 2020), as `torch.optim.RAdam`.
    #[serde(rename = "radam")]
    RAdam {
        #[serde(default = "paper_betas")]
        betas: (f64, f64),
        #[serde(default = "default_eps")]
        eps: f64,
        #[serde(default)]
        weight_decay: f64,
    },
}

/// The paper's Adam betas (0.9, 0.98).
fn paper_betas() -> (f64, f64) {
    (0.9, 0.98)
}

fn default_eps() -> f64 {
    1e-8
}

fn default_adamw_decay() -> f64 {
    0.01
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        OptimizerConfig::Adam { betas: paper_betas(), eps: default_eps(), weight_decay: 0.0 }
    }
}

impl OptimizerConfig {
    pub fn name(&self) -> &'static str {
        match self {
            OptimizerConfig::Adam { .. } => "adam",
            OptimizerConfig::AdamW { .. } => "adamw",
            OptimizerConfig::Sgd { .. } => "sgd",
            OptimizerConfig::RAdam { .. } => "radam",
        }
    }

    /// Names of the per-parameter state tensors this optimizer keeps.
    fn slots(&self) -> &'static [&'static str] {
        match self {
            OptimizerConfig::Sgd { momentum, .. } if *momentum == 0.0 => &[],
            OptimizerConfig::Sgd { .. } => &["momentum"],
            _ => &["exp_avg", "exp_avg_sq"],
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        let (b1, b2, eps, wd) = match *self {
            OptimizerConfig::Adam { betas, eps, weight_decay }
            | OptimizerConfig::AdamW { betas, eps, weight_decay }
            | OptimizerConfig::RAdam { betas, eps, weight_decay } => (betas.0, betas.1, eps, weight_decay),
            OptimizerConfig::Sgd { momentum, weight_decay } => {
                if !(0.0..1.0).contains(&momentum) {
                    return Err(format!("optimizer.momentum must lie in [0, 1), got {momentum}"));
                }
                (0.0, 0.0, 1.0, weight_decay)
            }
        };
        if !(0.0..1.0).contains(&b1) || !(0.0..1.0).contains(&b2) {
            return Err(format!("optimizer.betas must lie in [0, 1), got ({b1}, {b2})"));
        }
        if !(eps > 0.0) {
            return Err(format!("optimizer.eps must be > 0, got {eps}"));
        }
        if !(wd >= 0.0) {
            return Err(format!("optimizer.weight_decay must be >= 0, got {wd}"));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("optimizer state: {0}")]
pub struct StateError(pub String);

pub struct Optimizer {
    cfg: OptimizerConfig,
    params: Vec<(String, Tensor)>,
    /// `state[i][k]`: slot `k` of parameter `i`.
    state: Vec<Vec<Tensor>>,
    /// Updates taken so far.
    step: u64,
    /// Adam / AdamW through the fused kernel.
    fused: bool,
}

impl Optimizer {
    pub fn new(cfg: OptimizerConfig, params: Vec<(String, Tensor)>) -> Self {
        let state = params.iter().map(|(_, p)| cfg.slots().iter().map(|_| Tensor::zeros_like(p)).collect()).collect();
        Optimizer { cfg, params, state, step: 0, fused: true }
    }

    pub fn steps_taken(&self) -> u64 {
        self.step
    }

    /// Sets the updates taken so far (a data-parallel rank taking rank 0's position).
    pub fn set_steps_taken(&mut self, steps: u64) {
        self.step = steps;
    }

    pub fn config(&self) -> &OptimizerConfig {
        &self.cfg
    }

    /// Drops every gradient (sets it to None, as `zero_grad(set_to_none=True)`): the next
    /// backward writes fresh gradients instead of adding into zero-filled ones.
    pub fn zero_grad(&mut self) -> Result<(), preln_ops::OpError> {
        for (_, p) in &self.params {
            preln_ops::clear_grad(p)?;
        }
        Ok(())
    }

    /// Whether Adam / AdamW updates go through libtorch's fused multi-tensor kernel (the
    /// default) or the per-parameter reference loop below (the same update; for tests).
    pub fn set_fused(&mut self, fused: bool) {
        self.fused = fused;
    }

    /// Adam / AdamW through libtorch's fused kernel over every parameter with a gradient.
    /// Returns false (nothing done) for other optimizers or when fusing is off.
    fn fused_step(&mut self, lr: f64) -> Result<bool, preln_ops::OpError> {
        let (betas, eps, wd, decoupled) = match self.cfg {
            OptimizerConfig::Adam { betas, eps, weight_decay } => (betas, eps, weight_decay, false),
            OptimizerConfig::AdamW { betas, eps, weight_decay } => (betas, eps, weight_decay, true),
            _ => return Ok(false),
        };
        if !self.fused || self.params.is_empty() {
            return Ok(false);
        }
        let (mut ps, mut gs, mut ms, mut vs) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for ((_, p), st) in self.params.iter().zip(&self.state) {
            let g = p.grad();
            if g.defined() {
                ps.push(p.shallow_clone());
                gs.push(g);
                ms.push(st[0].shallow_clone());
                vs.push(st[1].shallow_clone());
            }
        }
        let device = self.params[0].1.device();
        let step = Tensor::from(self.step as f32).to_device(device);
        tch::no_grad(|| preln_ops::fused_adam(&ps, &gs, &ms, &vs, &step, lr, betas, wd, eps, decoupled))?;
        Ok(true)
    }

    /// One update with learning rate `lr`, from the gradients in `.grad()`.
    pub fn step(&mut self, lr: f64) -> Result<(), preln_ops::OpError> {
        self.step += 1;
        if self.fused_step(lr)? {
            return Ok(());
        }
        let t = self.step as i32;
        let cfg = self.cfg.clone();
        tch::no_grad(|| {
            for ((_, p), st) in self.params.iter_mut().zip(self.state.iter_mut()) {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                match cfg {
                    OptimizerConfig::Adam { betas, eps, weight_decay } => {
                        let g = if weight_decay != 0.0 { &g + &*p * weight_decay } else { g };
                        adam(p, &g, st, betas, eps, lr, t);
                    }
                    OptimizerConfig::AdamW { betas, eps, weight_decay } => {
                        if weight_decay != 0.0 {
                            let _ = p.g_mul_scalar_(1.0 - lr * weight_decay);
                        }
                        adam(p, &g, st, betas, eps, lr, t);
                    }
                    OptimizerConfig::RAdam { betas, eps, weight_decay } => {
                        let g = if weight_decay != 0.0 { &g + &*p * weight_decay } else { g };
                        radam(p, &g, st, betas, eps, lr, t);
                    }
                    OptimizerConfig::Sgd { momentum, weight_decay } => {
                        let g = if weight_decay != 0.0 { &g + &*p * weight_decay } else { g };
                        if momentum == 0.0 {
                            let _ = p.g_add_(&(g * -lr));
                        } else {
                            let buf = &mut st[0];
                            let _ = buf.g_mul_scalar_(momentum);
                            let _ = buf.g_add_(&g);
                            let _ = p.g_add_(&(&*buf * -lr));
                        }
                    }
                }
            }
        });
        Ok(())
    }

    /// The state as named tensors: `optimizer.{slot}.{parameter path}`.
    /// The optimizer's kind (`adam`, `adamw`, `sgd`, `radam`).
    pub fn kind(&self) -> &'static str {
        self.cfg.name()
    }

    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let slots = self.cfg.slots();
        let mut out = Vec::new();
        for ((name, _), st) in self.params.iter().zip(&self.state) {
            for (slot, t) in slots.iter().zip(st) {
                out.push((format!("optimizer.{slot}.{name}"), t.shallow_clone()));
            }
        }
        out
    }

    /// Restores state written by [`Self::state_tensors`] after `steps` updates.
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, steps: u64) -> Result<(), StateError> {
        let slots = self.cfg.slots();
        tch::no_grad(|| {
            for ((name, _), st) in self.params.iter().zip(self.state.iter_mut()) {
                for (slot, t) in slots.iter().zip(st.iter_mut()) {
                    let key = format!("optimizer.{slot}.{name}");
                    let src = tensors.get(&key).ok_or_else(|| StateError(format!("missing `{key}`")))?;
                    if src.size() != t.size() {
                        return Err(StateError(format!("`{key}` has shape {:?}, expected {:?}", src.size(), t.size())));
                    }
                    t.copy_(src);
                }
            }
            Ok(())
        })?;
        self.step = steps;
        Ok(())
    }
}

fn update_moments(g: &Tensor, st: &mut [Tensor], (b1, b2): (f64, f64)) {
    let (m, v) = st.split_at_mut(1);
    let _ = m[0].lerp_(g, 1.0 - b1);
    let _ = v[0].g_mul_scalar_(b2);
    let _ = v[0].addcmul_(g, &(g * (1.0 - b2)));
}

/// `torch.optim.Adam`'s update: `p -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps)`.
fn adam(p: &mut Tensor, g: &Tensor, st: &mut [Tensor], betas: (f64, f64), eps: f64, lr: f64, t: i32) {
    update_moments(g, st, betas);
    let bc1 = 1.0 - betas.0.powi(t);
    let bc2 = 1.0 - betas.1.powi(t);
    let denom = (st[1].sqrt() / bc2.sqrt()) + eps;
    let _ = p.addcdiv_(&(&st[0] * (-lr / bc1)), &denom);
}

/// `torch.optim.RAdam`'s update: Adam's step scaled by the variance rectification term while
/// the approximated SMA length exceeds 5, plain momentum SGD before.
fn radam(p: &mut Tensor, g: &Tensor, st: &mut [Tensor], betas: (f64, f64), eps: f64, lr: f64, t: i32) {
    update_moments(g, st, betas);
    let (b1, b2) = betas;
    let bc1 = 1.0 - b1.powi(t);
    let bc2 = 1.0 - b2.powi(t);
    let rho_inf = 2.0 / (1.0 - b2) - 1.0;
    let rho_t = rho_inf - 2.0 * t as f64 * b2.powi(t) / bc2;
    let m_hat = &st[0] / bc1;
    if rho_t > 5.0 {
        let rect = ((rho_t - 4.0) * (rho_t - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t)).sqrt();
        let adaptive = bc2.sqrt() / (st[1].sqrt() + eps);
        let _ = p.g_add_(&(m_hat * adaptive * (-lr * rect)));
    } else {
        let _ = p.g_add_(&(m_hat * -lr));
    }
}

/// The total 2-norm of all gradients (fp32 accumulation), as a 0-d tensor.
pub fn total_grad_norm(params: &[(String, Tensor)]) -> Tensor {
    let norms: Vec<Tensor> = params
        .iter()
        .filter_map(|(_, p)| {
            let g = p.grad();
            g.defined().then(|| g.to_kind(Kind::Float).norm())
        })
        .collect();
    Tensor::stack(&norms, 0).norm()
}

/// Scales all gradients so that their total norm is at most `max_norm`
/// (`torch.nn.utils.clip_grad_norm_`); `total` is their current total norm.
pub fn clip_grads(params: &[(String, Tensor)], total: f64, max_norm: f64) {
    if total > max_norm {
        let scale = max_norm / (total + 1e-6);
        tch::no_grad(|| {
            for (_, p) in params {
                let mut g = p.grad();
                if g.defined() {
                    let _ = g.g_mul_scalar_(scale);
                }
            }
        });
    }
}
