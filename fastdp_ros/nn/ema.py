"""Exponential moving average of a model's weights, with a warm-up decay schedule.

The decay after n updates beyond `update_after_step` is

    decay(n) = clamp(1 - (1 + n / inv_gamma) ** -power, min_value, max_value),  decay(0) = 0

so the average starts as a copy of the model and forgets its early weights fast; power=3/4
reaches 0.999 after about 10k steps, power=2/3 (for long runs) after about 30k.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from fastdp_ros.errors import ConfigError

__all__ = ["EMAModel"]


class EMAModel:
    """Keeps `averaged_model`, an eval-mode copy of `model` whose weights are averaged.

    Floating-point parameters that require grad are averaged; frozen or integer parameters
    and all buffers (GroupNorm has none; BatchNorm's running stats, step counters) are
    copied from the model at every step.

    Args:
        model: the model being trained (deep-copied once here).
        power, inv_gamma: shape of the warm-up (see the module docstring).
        max_value, min_value: clamp of the decay.
        update_after_step: optimizer steps before averaging starts (the copy tracks the model
            exactly until then).
    """

    def __init__(
        self,
        model: nn.Module,
        power: float = 0.75,
        max_value: float = 0.9999,
        update_after_step: int = 0,
        inv_gamma: float = 1.0,
        min_value: float = 0.0,
    ):
        if not 0.0 <= min_value <= max_value <= 1.0:
            raise ConfigError(
                f"EMA needs 0 <= min_value <= max_value <= 1, got {min_value}, {max_value}"
            )
        if power <= 0 or inv_gamma <= 0 or update_after_step < 0:
            raise ConfigError(
                f"EMA needs power > 0, inv_gamma > 0, update_after_step >= 0; got "
                f"power={power}, inv_gamma={inv_gamma}, update_after_step={update_after_step}"
            )
        self.averaged_model = copy.deepcopy(model)
        self.averaged_model.eval()
        self.averaged_model.requires_grad_(False)
        self.power = float(power)
        self.max_value = float(max_value)
        self.min_value = float(min_value)
        self.update_after_step = int(update_after_step)
        self.inv_gamma = float(inv_gamma)
        self.optimization_step = 0
        self.decay = 0.0

    def get_decay(self, optimization_step: int) -> float:
        """Decay used by the step() call made when `optimization_step` steps were done."""
        n = max(0, optimization_step - self.update_after_step - 1)
        if n <= 0:
            return 0.0
        value = 1.0 - (1.0 + n / self.inv_gamma) ** -self.power
        return min(max(value, self.min_value), self.max_value)

    @torch.no_grad()
    def step(self, model: nn.Module) -> None:
        """Fold the model's current weights into the average (call after optimizer.step())."""
        self.decay = self.get_decay(self.optimization_step)
        params = dict(model.named_parameters())
        ema_params = dict(self.averaged_model.named_parameters())
        if params.keys() != ema_params.keys():
            raise ConfigError("EMA model and trained model have different parameters")
        for name, ema_p in ema_params.items():
            src = params[name]
            p = src.detach()
            if src.requires_grad and p.is_floating_point():
                ema_p.mul_(self.decay).add_(p.to(ema_p.dtype), alpha=1.0 - self.decay)
            else:
                ema_p.copy_(p)
        buffers = dict(model.named_buffers())
        for name, ema_b in self.averaged_model.named_buffers():
            if name in buffers:
                ema_b.copy_(buffers[name])
        self.optimization_step += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Flat {name: tensor} (safetensors-ready): the averaged weights and the step count."""
        out = {f"averaged_model.{k}": v.detach().clone()
               for k, v in self.averaged_model.state_dict().items()}
        out["optimization_step"] = torch.tensor(self.optimization_step, dtype=torch.int64)
        out["decay"] = torch.tensor(self.decay, dtype=torch.float64)
        return out

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        prefix = "averaged_model."
        model_state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        try:
            self.averaged_model.load_state_dict(model_state)
            self.optimization_step = int(state["optimization_step"])
            self.decay = float(state.get("decay", torch.tensor(0.0)))
        except (KeyError, RuntimeError) as exc:
            raise ConfigError(f"EMA state does not match the model: {exc}") from exc
