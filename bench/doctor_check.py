"""Does the doctor predict the run? ``python -m cssl.doctor`` against the run's own ``images_per_second``.

    PYTHONPATH=. python bench/doctor_check.py                 # digits (default run), lab, an image folder
    PYTHONPATH=. python bench/doctor_check.py --cases digits --lab-epochs 10
    PYTHONPATH=. python bench/doctor_check.py --threads 1          # on a shared machine

For each case the doctor runs first, then ``train.py`` with the same overrides (``logger=none``, its own
run dir); the table gives the doctor's expected images/s, the run's ``summary.json`` figure, their ratio
and the machine's load average before and after (a shared machine moves both figures). The image folder
is fabricated: ImageNet-like 500x375 JPEGs in two classes (bench/loader.py's images).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.loader import imagenet_like  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def write_two_classes(root: Path, per_class: int, val_per_class: int = 16) -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("val", val_per_class)):
        for cls in ("a", "b"):
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                imagenet_like(rng).save(folder / f"{i:05d}.jpg", format="JPEG", quality=90)


def cases(args: argparse.Namespace, tmp: Path) -> dict[str, list[str]]:
    folder = tmp / "images"
    return {
        "digits": [f"trainer.max_epochs={args.digits_epochs}"],
        "lab": ["experiment=lab", f"trainer.max_epochs={args.lab_epochs}", f"data.root={tmp / 'data'}"],
        "imagefolder": [
            "data=imagefolder",
            f"data.root={folder}",
            "data.image_size=64",
            "data.batch_size=32",
            "data.num_workers=1",
            "backbone=resnet18",
            "cifar_stem=false",
            f"trainer.max_epochs={args.folder_epochs}",
        ],
    }


def load() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def run(command: list[str], threads: int | None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore", "HYDRA_FULL_ERROR": "0"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)  # torch's intra-op threads in both processes
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return done


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["digits", "lab", "imagefolder"])
    parser.add_argument("--digits-epochs", type=int, default=30, help="30: the default run")
    parser.add_argument("--lab-epochs", type=int, default=10, help="experiment=lab trains 100; the rate is per step")
    parser.add_argument("--folder-epochs", type=int, default=3)
    parser.add_argument("--folder-images", type=int, default=256, help="training JPEGs per class")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads of the doctor and the run (OMP_NUM_THREADS); 1 on a shared machine, where a thread "
        "waiting for a busy core stalls every parallel op",
    )
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        write_two_classes(tmp_path / "images", args.folder_images)
        plan = cases(args, tmp_path)
        for name in args.cases:
            overrides = ["logger=none", "trainer.progress_bar=false", *plan[name]]
            before = load()
            out = run([sys.executable, "-m", "cssl.doctor", *overrides], args.threads).stdout
            expected = float(re.search(r"expected: ([\d,.]+) images/s", out).group(1).replace(",", ""))
            verdict = re.search(r"verdict: ([^.]+)\.", out).group(1)
            middle = load()
            run_dir = tmp_path / "runs" / name
            run([sys.executable, "train.py", *overrides, f"run_dir={run_dir}"], args.threads)
            summary = json.loads((run_dir / "summary.json").read_text())
            measured = float(summary["images_per_second"])
            rows.append(
                {
                    "case": name,
                    "overrides": plan[name],
                    "doctor_images_per_second": expected,
                    "doctor_verdict": verdict,
                    "run_images_per_second": measured,
                    "ratio": expected / measured,
                    "load_before_doctor": before,
                    "load_before_run": middle,
                    "load_after": load(),
                    "doctor_output": out,
                }
            )
            print(
                f"{name}: doctor {expected:.1f}, run {measured:.1f} images/s, ratio {expected / measured:.2f}",
                flush=True,
            )
    print(
        f"\n{'case':<12} {'doctor img/s':>12} {'run img/s':>10} {'ratio':>6}  load avg (1, 5, 15 min) before/between/after"
    )
    for r in rows:
        print(
            f"{r['case']:<12} {r['doctor_images_per_second']:>12.1f} {r['run_images_per_second']:>10.1f} "
            f"{r['ratio']:>6.2f}  {r['load_before_doctor']} / {r['load_before_run']} / {r['load_after']}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
