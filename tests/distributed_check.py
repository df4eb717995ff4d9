"""Run the ``train`` command under torchrun and record what every process ends with.

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/distributed_check.py DUMP_DIR train ...

Each process runs ``ddpm_studio.cli.main`` on the arguments after DUMP_DIR, exactly as
``python -m ddpm_studio`` would, with two additions for tests/test_distributed.py to check:
- when training finishes, each rank writes its raw and EMA weights and its loss history to
  DUMP_DIR/rank<R>.safetensors (read from the trainer's own state, in its suspended frame);
- every rank but 0 is given the model folder ``<OUT>.rank<R>`` instead of ``<OUT>``, so that
  anything it wrote there would show; it must write nothing (not in a resume, which reads ``<OUT>``);
- when training starts, each rank writes its random streams (global and noise generators) to
  DUMP_DIR/rank<R>.started.safetensors; at the end they go into rank<R>.safetensors too;
- with STOP_RANK=R and STOP_AFTER_STEP=N in the environment, rank R alone gets a SIGINT as it
  reports step N, as a stray signal or a Ctrl-C that reached one process would.
- each rank records in DUMP_DIR/rank<R>.cache.json whether it decoded the images or opened
  them from the dataset cache, and which cache entry;
- in a class-conditional run, each rank records in DUMP_DIR/rank<R>.labels.json, step by step, the labels
  it trained with and the mean pixel value of each image they went with.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from contextlib import closing
from pathlib import Path

import torch
from safetensors.torch import save_file


def main() -> int:
    dump_dir, argv = Path(sys.argv[1]), sys.argv[2:]
    torch.set_num_threads(1)
    from ddpm_studio import cli
    from ddpm_studio.core.data import cache
    from ddpm_studio.core.training import loop as training

    rank = int(os.environ.get("RANK", "0"))
    stop_rank = int(os.environ.get("STOP_RANK", "-1"))
    stop_after = int(os.environ.get("STOP_AFTER_STEP", "-1"))
    real_train = training.train
    real_open = training.open_cached_dataset

    def recording_open(*args, **kwargs):
        for event in real_open(*args, **kwargs):
            if isinstance(event, cache.CachedScanResult):
                dump_dir.mkdir(parents=True, exist_ok=True)
                record = {"decoded": event.decoded, "entry": str(event.entry), "builder": kwargs.get("builder")}
                (dump_dir / f"rank{rank}.cache.json").write_text(json.dumps(record))
            yield event

    def streams(state) -> dict:
        return {f"streams.{name}": value for name, value in state.own_streams().items()}

    def recording_train(config, images, out_dir, *args, **kwargs):
        if rank != 0 and not kwargs.get("resume"):  # a resume reads the folder on every rank
            out_dir = Path(f"{out_dir}.rank{rank}")
        events = real_train(config, images, out_dir, *args, **kwargs)
        with closing(events):
            for event in events:
                dump_dir.mkdir(parents=True, exist_ok=True)
                if isinstance(event, training.StartedEvent):
                    state = events.gi_frame.f_locals["state"]
                    save_file(streams(state), str(dump_dir / f"rank{rank}.started.safetensors"),
                              metadata={"step": str(state.step)})
                if isinstance(event, training.FinishedEvent):
                    state = events.gi_frame.f_locals["state"]
                    tensors = {f"model.{k}": v for k, v in state.model.state_dict().items()}
                    tensors.update({f"ema.{k}": v for k, v in state.ema.state_dict().items()})
                    tensors["losses"] = torch.tensor(state.losses, dtype=torch.float32)
                    tensors.update(streams(state))
                    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()},
                              str(dump_dir / f"rank{rank}.safetensors"), metadata={"step": str(state.step)})
                if isinstance(event, training.StepEvent) and rank == stop_rank and event.step == stop_after:
                    os.kill(os.getpid(), signal.SIGINT)
                yield event

    class RecordingBatches(training.BatchSource):
        """The batches as the loop gets them; a class run's labels and images go to rank<R>.labels.json."""

        def next(self):
            batch = super().next()
            if batch.labels is not None:
                seen.append({"step": batch.step, "labels": batch.labels.tolist(),
                             "means": batch.images.float().mean(dim=(1, 2, 3)).tolist()})
                dump_dir.mkdir(parents=True, exist_ok=True)
                (dump_dir / f"rank{rank}.labels.json").write_text(json.dumps(seen))
            return batch

    seen: list[dict] = []
    training.BatchSource = RecordingBatches
    training.train = recording_train  # train_from_folder, which the CLI calls, looks these up at call time
    training.open_cached_dataset = recording_open
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
