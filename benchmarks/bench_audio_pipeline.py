"""Audio pipeline speed: feature extraction throughput, and the training step with L2BN vs BN.

1. Clips per second, on synthetic TAU-layout clips: on-the-fly soundfile decode + torchaudio log-mel
   in batches (the pipeline's way), reading the offline memory-mapped feature cache (after building
   it once; its build rate is shown too), and per-clip librosa extraction (the common baseline).
2. Training-step time (log-mel front-end + CNN, forward, backward, SGD step) of the paper's three ASC
   CNNs with L2BN vs BN, interleaved repeats, medians, ratio from the same run.

    python benchmarks/bench_audio_pipeline.py                        # 44.1 kHz, 10-s clips, CPU
    python benchmarks/bench_audio_pipeline.py --seconds 1 --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import librosa
import numpy as np
import pandas as pd
import soundfile as sf
import torch
import torch.nn.functional as F

from datamodules import write_synthetic_tau
from datamodules.dcase import AudioClipDataset
from datamodules.feature_cache import CachedFeatureDataset, build_feature_cache
from models.audio import build_audio_model
from models.frontend import LogMel

MEL = {"n_fft": 2048, "hop_length": 1024, "n_mels": 128}


def extraction_rates(root: Path, files: list[str], sample_rate: int, batch: int) -> dict[str, float]:
    frontend = LogMel(sample_rate, **MEL)
    frontend(torch.from_numpy(sf.read(str(root / files[0]), dtype="float32")[0])[None])  # warm-up, untimed
    wave, _ = librosa.load(str(root / files[0]), sr=None)
    librosa.feature.melspectrogram(y=wave, sr=sample_rate, **MEL)  # warm-up (numba compilation), untimed
    start = time.perf_counter()
    for i in range(0, len(files), batch):
        waves = [sf.read(str(root / f), dtype="float32")[0] for f in files[i : i + batch]]
        frontend(torch.from_numpy(np.stack(waves)))
    ours = len(files) / (time.perf_counter() - start)
    table = pd.DataFrame({"filename": files})
    clips = AudioClipDataset(root, table, None, sample_rate, len(sf.read(str(root / files[0]))[0]), random_crop=False)
    start = time.perf_counter()
    build_feature_cache(root / "cache.npy", clips, frontend, MEL, batch)
    build = len(files) / (time.perf_counter() - start)
    cached = CachedFeatureDataset(root / "cache.npy", files, [-1] * len(files))
    start = time.perf_counter()
    for i in range(0, len(files), batch):
        torch.stack([cached[j][0] for j in range(i, min(i + batch, len(files)))])
    from_cache = len(files) / (time.perf_counter() - start)
    start = time.perf_counter()
    for f in files:
        wave, _ = librosa.load(str(root / f), sr=None)
        librosa.power_to_db(librosa.feature.melspectrogram(y=wave, sr=sample_rate, **MEL))
    baseline = len(files) / (time.perf_counter() - start)
    return {
        "soundfile + torchaudio (batched) clips/s": round(ours, 1),
        "feature cache: build clips/s": round(build, 1),
        "feature cache: read clips/s": round(from_cache, 1),
        "librosa per clip clips/s": round(baseline, 1),
    }


def step_times(arch: str, args: argparse.Namespace, samples: int) -> dict:
    torch.manual_seed(0)
    wave = torch.randn(args.batch_size, samples, device=args.device)
    labels = torch.randint(0, 10, (args.batch_size,), device=args.device)
    models = {}
    for norm in ("bn", "l2bn"):
        models[norm] = torch.nn.Sequential(LogMel(args.sample_rate, **MEL), build_audio_model(arch, 10, norm)).to(
            args.device
        )
    models["l2bn"].load_state_dict(models["bn"].state_dict())
    optimizers = {norm: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for norm, m in models.items()}
    times: dict[str, list[float]] = {"bn": [], "l2bn": []}
    for i in range(args.warmup + args.repeats):
        for norm, model in models.items():
            if wave.is_cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            optimizers[norm].zero_grad(set_to_none=True)
            F.cross_entropy(model(wave), labels).backward()
            optimizers[norm].step()
            if wave.is_cuda:
                torch.cuda.synchronize()
            if i >= args.warmup:
                times[norm].append(time.perf_counter() - start)
    bn, l2bn = statistics.median(times["bn"]), statistics.median(times["l2bn"])
    return {
        "arch": arch,
        "BN step ms": round(bn * 1e3, 1),
        "L2BN step ms": round(l2bn * 1e3, 1),
        "L2BN/BN": round(l2bn / bn, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sample-rate", type=int, default=44100)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clips", type=int, default=5, help="synthetic clips per scene for the extraction benchmark")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--archs", nargs="+", default=["fs_resnet", "fcnn", "fsfcnn"])
    args = parser.parse_args()
    samples = round(args.sample_rate * args.seconds)
    with tempfile.TemporaryDirectory() as tmp:
        root = write_synthetic_tau(tmp, clips_per_scene=args.clips, sample_rate=args.sample_rate, duration=args.seconds)
        files = pd.read_csv(root / "meta.csv", sep="\t")["filename"].tolist()
        rates = extraction_rates(root, files, args.sample_rate, args.batch_size)
    print(
        f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}, "
        f"{args.sample_rate} Hz x {args.seconds} s clips, log-mel {MEL}"
    )
    print(pd.DataFrame([rates]).to_markdown(index=False))
    print(f"\nTraining step, batch {args.batch_size}, {args.repeats} interleaved repeats (medians):")
    print(pd.DataFrame([step_times(arch, args, samples) for arch in args.archs]).to_markdown(index=False))


if __name__ == "__main__":
    main()
