"""Assemble a run from its configs, resume it if a checkpoint exists, train, and report."""

from __future__ import annotations

import json
import os
import random

import numpy as np
import torch

from megamix.data.blend import BlendedDataset
from megamix.data.domain import build_domain_datasets
from megamix.data.schedule import MixtureSchedule
from megamix.mixing.base import MixerContext
from megamix.mixing.registry import build_mixer, method_spec
from megamix.mixing.weights_file import write_weights_file
from megamix.model.fused import announce
from megamix.fileio import atomic_write_text
from megamix.training.checkpoint import (find_checkpoint, load_checkpoint, rng_state, save_checkpoint,
                                         set_rng_state, tag_for)
from megamix.training.config import RunConfig
from megamix.training.distributed import DistInfo
from megamix.training.engine import build_engine, build_model, describe_precision, set_matmul_precision
from megamix.training.evaluation import Evaluator
from megamix.training.loop import LoopHooks, LoopState, PhaseLoop
from megamix.training.metrics import MetricsSink
from megamix.training.preemption import ExitSignalHandler
from megamix.training.repetition import RepetitionTracker
from megamix.training.wandb_writer import wandb_writer_for
from megamix.training.report import test_report
from megamix.training.resume import check_resume_config, refit_lr_schedule
from megamix.training.run_state import STATE_VERSION, read_run_state
from megamix.training.signals import SignalEnv, build_providers
from megamix.training.step import StepLayout, StepRunner
from megamix.training.throughput import Throughput, peak_tflops


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (identically on every data-parallel rank, as Megatron does)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _resume_state(cfg: RunConfig, dist_info: DistInfo) -> tuple[str | None, dict | None]:
    tag = find_checkpoint(cfg.training.load, cfg.training.ckpt_step)
    if tag is None:
        return None, None
    state = read_run_state(cfg.training.load, tag, dist_info.rank, dist_info.world_size)
    client = state.client  # state.config: a config written by a newer megamix is refused, naming the key
    client["changes"] = check_resume_config(state.config.to_dict(), cfg.to_dict(), cfg.training.load, tag,
                                            state.iteration)
    return tag, client


class Run:
    """Everything one training run is made of, wired together."""

    def __init__(self, cfg: RunConfig, dist_info: DistInfo) -> None:
        self.cfg = cfg
        self.dist = dist_info
        tr = cfg.training
        seed_everything(tr.seed)
        self.exit_handler = ExitSignalHandler(tr.exit_signals).install()
        self.tag, self.client = _resume_state(cfg, dist_info)
        self.train_sets = build_domain_datasets(cfg.data, "train")
        self.domains = [ds.name for ds in self.train_sets]
        self.schedule = (MixtureSchedule.from_dict(self.client["schedule"]) if self.client
                         else MixtureSchedule(self.domains, tr.global_batch_size))
        self.blend = BlendedDataset(self.train_sets, self.schedule)
        self.blend.sync()
        set_matmul_precision(tr, dist_info.device)
        self.model = build_model(cfg.model, tr, cfg.optimizer, dist_info.world_size)
        if tr.load_hf and not self.tag:
            self._init_from_hf()
        self.engine = build_engine(self.model, tr, cfg.optimizer, dist_info.world_size, dist_info.device)
        self.precision_line = describe_precision(self.engine, tr, dist_info.device)
        self.layout = StepLayout(tr.global_batch_size, tr.micro_batch_size, cfg.data.seq_length, dist_info.rank,
                                 dist_info.world_size, len(self.domains))
        self.mixer = build_mixer(cfg.mixing, MixerContext(
            domains=tuple(self.domains), train_tokens=tuple(int(ds.num_tokens) for ds in self.train_sets),
            train_iters=tr.train_iters, global_batch_size=tr.global_batch_size, seed=tr.seed))
        valid = build_domain_datasets(cfg.data, "valid")
        self.evaluator = Evaluator(valid, cfg.data.eval_samples_per_domain, tr.eval_batch, dist_info.rank,
                                   dist_info.world_size, dist_info.device)
        env = SignalEnv(self.engine, self.layout, dist_info.device, cfg, self.evaluator.batches)
        declared = method_spec(cfg.mixing.method).signals(cfg.mixing.options)
        self.runner = StepRunner(self.engine, self.blend, self.layout, dist_info.device,
                                 build_providers(dict(declared), env, cfg.mixing.options),
                                 prefetch=cfg.data.dataloader_prefetch)
        lg = cfg.logging
        self.metrics = MetricsSink(tr.save, dist_info.is_main, lg.tensorboard_dir, wandb_writer_for(
            lg.wandb_project, lg.wandb_exp_name, lg.wandb_save_dir, tr.save, dist_info.is_main, cfg.to_dict()))
        if self.tag:
            self.state = self._restore()
        else:
            self.metrics.truncate(0)  # lines of an earlier attempt that died before its first checkpoint
            self.state = LoopState()

    def _init_from_hf(self) -> None:
        """--load-hf on a fresh run; under ZeRO-3 into the gathered parameters, rank 0's copy broadcast."""
        from megamix.interop.export import init_from_hf

        if self.cfg.training.zero_stage < 3:
            init_from_hf(self.model, self.cfg.training.load_hf)
            return
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(self.model.parameters()), modifier_rank=0):
            init_from_hf(self.model, self.cfg.training.load_hf)

    def _restore(self) -> LoopState:
        load_checkpoint(self.engine, self.cfg.training.load, self.tag)
        self.mixer.load_state_dict(self.client["mixer"])
        set_rng_state(self.client["rng"])
        self.metrics.truncate(self.client["metrics_offset"])
        state = LoopState.from_dict(self.client["loop"])
        self.metrics.print(f"resumed from {self.cfg.training.load}/{self.tag} at iteration {state.iteration}")
        self._announce_changes(state.iteration)
        return state

    def _announce_changes(self, iteration: int) -> None:
        changes = self.client["changes"]
        if not changes:
            return
        self.metrics.print("settings changed since the checkpoint:\n  " + "\n  ".join(changes))
        old_iters = self.client["config"]["training"]["train_iters"]
        if old_iters != self.cfg.training.train_iters:
            lrs = refit_lr_schedule(self.engine)
            detail = f" (lr {lrs[0]:.3E} -> {lrs[1]:.3E})" if lrs else " (DeepSpeed's own scheduler: unchanged)"
            self.metrics.print(f"--train-iters {old_iters} -> {self.cfg.training.train_iters}: the LR schedule is "
                               f"recomputed for the new length from iteration {iteration}{detail}; the mixer plans "
                               "its next phases for the new remaining steps")

    def _client_state(self, state: LoopState) -> dict:
        return {"version": STATE_VERSION, "loop": state.to_dict(), "schedule": self.schedule.to_dict(),
                "mixer": self.mixer.state_dict(), "mixer_name": self.mixer.name, "rng": rng_state(),
                "metrics_offset": self.metrics.offset(), "config": self.cfg.to_dict(), "domains": self.domains}

    def save(self, state: LoopState) -> None:
        """Checkpoint (when --save is given) and write the schedule so far beside it."""
        save_dir = self.cfg.training.save
        if not save_dir:
            return
        save_checkpoint(self.engine, save_dir, state.iteration, self._client_state(state), self.dist.is_main)
        if self.dist.is_main:
            self.schedule.save(os.path.join(save_dir, "schedule.json"))
        self.metrics.print(f"saved checkpoint {save_dir} at iteration {state.iteration}")

    def _hooks(self) -> LoopHooks:
        tr = self.cfg.training
        return LoopHooks(
            save=self.save,
            should_save=lambda it: bool(tr.save_interval and it % tr.save_interval == 0),
            should_exit=self._should_exit,
            lr=lambda: float(self.engine.get_lr()[0]),
            throughput=Throughput(self.cfg.model.flops_per_token(self.cfg.data.seq_length), self.dist.world_size,
                                  peak_tflops(self.dist.device, self.cfg.logging.peak_tflops),
                                  self.dist.device).measure,
        )

    def _should_exit(self, iteration: int) -> bool:
        tr = self.cfg.training
        signalled = self.exit_handler.agreed()  # collective: every rank calls it after every step
        if signalled:
            got = self.exit_handler.received or "an exit signal on another rank"
            self.metrics.print(f"received {got}: saving a checkpoint at iteration {iteration} and exiting")
        return signalled or bool(tr.exit_interval and iteration % tr.exit_interval == 0 and iteration < tr.train_iters)

    def _write_run_files(self) -> None:
        save_dir = self.cfg.training.save
        if save_dir and self.dist.is_main:
            os.makedirs(save_dir, exist_ok=True)
            atomic_write_text(os.path.join(save_dir, "config.json"),
                              json.dumps({**self.cfg.to_dict(), "domains": self.domains}, indent=2))

    def _repetition(self) -> RepetitionTracker:
        def warn(line: str, event: dict) -> None:
            self.metrics.print(line)
            self.metrics.record(event)

        return RepetitionTracker(self.blend, [ds.samples_per_epoch for ds in self.train_sets],
                                 self.cfg.training.global_batch_size, self.state.iteration,
                                 self.cfg.training.max_domain_epochs, warn)

    def train(self) -> bool:
        """Run the phase loop; True when the run reached --train-iters."""
        announce(self.metrics.print, self.cfg.model.fused_kernels, self.cfg.optimizer.fused, self.dist.device)
        self.metrics.print(self.precision_line)
        self._write_run_files()
        loop = PhaseLoop(self.mixer, self.runner, self.blend, self.schedule, self.evaluator, self.engine,
                         self.metrics, self.cfg.training.train_iters, self.cfg.logging.log_interval,
                         self.cfg.training.eval_interval, self._hooks(), self._repetition())
        try:
            self.state = loop.train(self.state)
        finally:
            self.runner.close()
            self.exit_handler.restore()
        finished = self.state.iteration >= self.cfg.training.train_iters and self.state.phase is None
        if finished:
            self._finish()
        return finished

    def _finish(self) -> None:
        tr = self.cfg.training
        if tr.save and find_checkpoint(tr.save) != tag_for(self.state.iteration):
            self.save(self.state)
        learned = self.mixer.learned_weights()
        if self.cfg.mixing.mixture_out and learned is not None and self.dist.is_main:
            write_weights_file(self.cfg.mixing.mixture_out, self.domains, learned,
                               {"method": self.mixer.name, "steps": self.state.iteration})
        if not tr.skip_test:
            test_sets = build_domain_datasets(self.cfg.data, "test")
            n = tr.test_samples_per_domain or 4096
            evaluator = Evaluator(test_sets, n, tr.eval_batch, self.dist.rank, self.dist.world_size,
                                  self.dist.device)
            test_report(evaluator.evaluate(self.engine), self.domains, self.state.iteration, self.metrics,
                        tr.save if self.dist.is_main else None)
        self.metrics.close()
