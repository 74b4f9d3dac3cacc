"""Training-time augmentations of the audio models: waveform rolling, and on the log-mel
``(N, 1, n_mels, frames)`` time rolling, SpecAugment masking and Freq-MixStyle. Each is the
identity in eval mode."""

from __future__ import annotations

import torch
import torchaudio
from torch import Tensor, nn

__all__ = ["FreqMixStyle", "SpecAugment", "TimeRoll", "WaveRoll"]


class SpecAugment(nn.Module):
    """torchaudio frequency and time masking on ``(N, 1, n_mels, frames)``, in training only:
    ``masks`` masks of each kind, the masked bins set to ``mask_value`` (0.0; the log floor
    ``log(floor)`` is what masking the power spectrogram before the log gives, as the DCASE
    2024/2025 baselines do)."""

    def __init__(self, freq_mask: int = 0, time_mask: int = 0, masks: int = 2, mask_value: float = 0.0) -> None:
        super().__init__()
        steps: list[nn.Module] = []
        for _ in range(masks if freq_mask else 0):
            steps.append(_Masking(torchaudio.transforms.FrequencyMasking(freq_mask, iid_masks=True), mask_value))
        for _ in range(masks if time_mask else 0):
            steps.append(_Masking(torchaudio.transforms.TimeMasking(time_mask, iid_masks=True), mask_value))
        self.steps = nn.Sequential(*steps)

    def forward(self, x: Tensor) -> Tensor:
        return self.steps(x) if self.training else x


class _Masking(nn.Module):
    """A torchaudio masking transform with its fill value (it takes it per call)."""

    def __init__(self, masking: nn.Module, value: float) -> None:
        super().__init__()
        self.masking, self.value = masking, value

    def forward(self, x: Tensor) -> Tensor:
        return self.masking(x, mask_value=self.value)


class WaveRoll(nn.Module):
    """Rolls each training waveform ``(N, samples)`` circularly by a uniform integer shift in
    ``[-max_shift, max_shift]`` samples (the DCASE 2024/2025 baselines: 0.1 s); identity otherwise
    and for log-mel inputs."""

    def __init__(self, max_shift: int) -> None:
        super().__init__()
        self.max_shift = max_shift

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.max_shift <= 0 or x.dim() != 2:
            return x
        shifts = torch.randint(-self.max_shift, self.max_shift + 1, (x.shape[0], 1), device=x.device)
        index = (torch.arange(x.shape[-1], device=x.device) - shifts) % x.shape[-1]
        return torch.gather(x, -1, index)


class TimeRoll(nn.Module):
    """Rolls each sample circularly along its last (time) axis by a random offset, in training
    only: waveforms ``(N, samples)`` or log-mels ``(N, 1, n_mels, frames)``."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return x
        length = x.shape[-1]
        shifts = torch.randint(0, length, (x.shape[0], *[1] * (x.dim() - 1)), device=x.device)
        index = (torch.arange(length, device=x.device) - shifts) % length
        return torch.gather(x, -1, index.expand_as(x))


class FreqMixStyle(nn.Module):
    """Freq-MixStyle (Schmid et al., DCASE 2022): with probability ``p`` per batch, the log-mel's
    per-(sample, frequency) mean and std over channels and time are replaced by a Beta(alpha, alpha)
    mix with those of another sample of the batch, in training only. ``(N, C, F, T)`` -> same."""

    def __init__(self, p: float = 0.0, alpha: float = 0.3, eps: float = 1e-6) -> None:
        super().__init__()
        self.p, self.alpha, self.eps = p, alpha, eps

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0 or torch.rand(()) > self.p:
            return x
        mean = x.mean(dim=(1, 3), keepdim=True).detach()
        std = (x.var(dim=(1, 3), keepdim=True) + self.eps).sqrt().detach()
        lam = torch.distributions.Beta(self.alpha, self.alpha).sample((x.shape[0], 1, 1, 1)).to(x.device)
        perm = torch.randperm(x.shape[0], device=x.device)
        mixed_mean = lam * mean + (1 - lam) * mean[perm]
        mixed_std = lam * std + (1 - lam) * std[perm]
        return (x - mean) / std * mixed_std + mixed_mean
