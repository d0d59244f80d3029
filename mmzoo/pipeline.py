"""Multi-stage recipes as pipelines of ordinary runs.

A recipe with stages (Point-BERT: tokenizer -> masked point modeling; TimeSformer: image ViT -> video) is
the ``pipeline`` config group: an ordered mapping of stages, each a list of Hydra overrides composed into
an ordinary ``train.py`` config and run by :func:`mmzoo.training.train` in ``RUN/<stage>/`` (its own
checkpoints, ``metrics.json``, logs and logger entries). A stage hands its final weights
(``RUN/<stage>/checkpoints/last.ckpt``) to later stages through a config key (``inputs``). The last stage
is the command itself::

    # configs/pipeline/point_bert.yaml
    carry: [trainer, debug, seed, data, logger, paths]  # command-line override groups every stage gets
    stages:
      tokenizer:
        overrides: [experiment=point_bert_tokenizer, data.labels_per_class=null]
      pretrain: # the last stage: the command line as typed (here `python train.py model=point_bert`)
        inputs: {task.dvae_checkpoint: tokenizer}

Rules:

* An earlier stage is composed from the command line's overrides of the ``carry`` groups, then the
  stage's ``overrides`` (later ones win), with ``pipeline=none``. The last stage is the composed command
  itself.
* A stage runs only when a later stage that runs takes its checkpoint: an input key the command already
  sets (``task.dvae_checkpoint=PATH``) is left as given, and a stage whose ``skip_when`` keys are set in
  the command (``model.pretrained=PATH``) is not run. When no earlier stage is left, the command is a
  single run in ``RUN`` itself, as without a pipeline.
* A finished stage writes ``RUN/<stage>/stage.json``; running the pipeline again (same ``RUN``:
  ``hydra.run.dir=RUN``) skips it, and a stage that was interrupted resumes from its own
  ``RUN/<stage>/checkpoints/last.ckpt``.
* Under DDP every rank runs every stage (an ordinary ``trainer.fit`` on every device); the ranks decide
  what to skip from the same files (``RUN`` must be on a file system every rank sees), and only rank 0
  writes the stage files and prints.

At the end ``RUN/pipeline.json`` lists every stage (run directory, checkpoint, wall and CPU time, metrics) and
``RUN/metrics.json`` holds the last stage's metrics.
"""
from __future__ import annotations

import copy
import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from omegaconf import DictConfig, OmegaConf, open_dict

from .checkpoint import atomic_write_text

log = logging.getLogger("mmzoo")

STAGE_FILE = "stage.json"  # written into RUN/<stage>/ when the stage has finished
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class Stage:
    """One stage of a pipeline.

    Args:
        name: the stage's name, also its folder ``RUN/<name>``.
        overrides: Hydra overrides composing its config (none for the last stage: the command itself).
        inputs: config key -> earlier stage whose ``checkpoints/last.ckpt`` the key receives.
        skip_when: config keys of the command; when one of them is set (not null) this stage is not run.
        carry: command-line override groups this stage gets (None: the pipeline's ``carry``).
    """

    name: str
    overrides: list[str] = field(default_factory=list)
    inputs: dict[str, str] = field(default_factory=dict)
    skip_when: list[str] = field(default_factory=list)
    carry: Optional[list[str]] = None


def parse_stages(pipeline: Any) -> list[Stage]:
    """The stages of a ``pipeline`` config node, checked: names usable as folders, ``inputs`` naming
    earlier stages only, lists where lists are expected. Raises ``ValueError`` naming the key to fix."""
    if pipeline is None:
        return []
    node = OmegaConf.to_container(pipeline, resolve=True) if isinstance(pipeline, DictConfig) else dict(pipeline)
    stages_node = node.get("stages") or {}
    if not isinstance(stages_node, dict):
        raise ValueError(f"pipeline.stages must map stage names to stages, got {type(stages_node).__name__}")
    allowed = {"overrides", "inputs", "skip_when", "carry"}
    stages: list[Stage] = []
    for name, spec in stages_node.items():
        where = f"pipeline.stages.{name}"
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"{where}: a stage name is a folder name (letters, digits, '_', '-', '.'), got {name!r}")
        spec = spec or {}
        if not isinstance(spec, dict):
            raise ValueError(f"{where} must be a mapping with keys {sorted(allowed)}, got {spec!r}")
        unknown = set(spec) - allowed
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)}; a stage has {sorted(allowed)}")
        for key in ("overrides", "skip_when", "carry"):
            value = spec.get(key)
            if value is not None and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                raise ValueError(f"{where}.{key} must be a list of strings, got {value!r}")
        inputs = spec.get("inputs") or {}
        if not isinstance(inputs, dict):
            raise ValueError(f"{where}.inputs must map config keys to earlier stages, got {inputs!r}")
        earlier = [s.name for s in stages]
        for key, source in inputs.items():
            if source not in earlier:
                raise ValueError(f"{where}.inputs.{key}: unknown stage {source!r}; a stage takes checkpoints "
                                 f"from the stages before it: {earlier or 'none (it is the first)'}")
        stages.append(Stage(name, list(spec.get("overrides") or []), dict(inputs), list(spec.get("skip_when") or []),
                            spec.get("carry")))
    if stages and (stages[-1].overrides or stages[-1].skip_when or stages[-1].carry is not None):
        raise ValueError(f"pipeline.stages.{stages[-1].name}: the last stage is the command itself and takes only "
                         "`inputs`; put its settings in the command or the recipe's config")
    return stages


def override_key(override: str) -> str:
    """The config key an override sets: ``trainer.devices=2`` -> ``trainer.devices``, ``+model.x=1`` ->
    ``model.x``, ``~a.b`` -> ``a.b``, ``data=shapes`` -> ``data``."""
    key = override.split("=", 1)[0].strip()
    return key.lstrip("+~").split("@", 1)[0]


def carried_overrides(overrides: Sequence[str], carry: Sequence[str]) -> list[str]:
    """The overrides whose group (first key component) is in ``carry``."""
    groups = set(carry)
    return [o for o in overrides if re.split(r"[./]", override_key(o), maxsplit=1)[0] in groups]


def stage_checkpoint(run_dir: Path, name: str) -> Path:
    """The checkpoint a stage hands on: its final weights."""
    return run_dir / name / "checkpoints" / "last.ckpt"


def _is_set(cfg: DictConfig, key: str) -> bool:
    value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
    return value is not None and value != ""


def _has_key(cfg: DictConfig, key: str) -> bool:
    """``key`` exists in ``cfg``, set or not (``null`` and mandatory ``???`` values count)."""
    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key, default=None) if parent_key else cfg
    return isinstance(parent, DictConfig) and leaf in parent.keys()


def _set_key(cfg: DictConfig, key: str, value: Any, where: str) -> None:
    if not _has_key(cfg, key):
        raise ValueError(f"{where}: the stage's config has no key {key!r}; check the key or the stage's overrides")
    OmegaConf.update(cfg, key, value, merge=False)


def plan(cfg: DictConfig, stages: Sequence[Stage]) -> dict[str, str]:
    """Which earlier stages run for the command ``cfg``: stage name -> "run" or the reason it does not."""
    last = stages[-1]
    verdict: dict[str, str] = {}
    wanted = {src for key, src in last.inputs.items() if not _is_set(cfg, key)}
    for stage in reversed(stages[:-1]):
        given = [k for k in stage.skip_when if _is_set(cfg, k)]
        if given:
            verdict[stage.name] = f"not needed: {given[0]} is given"
        elif stage.name not in wanted:
            verdict[stage.name] = "not needed: no later stage takes its checkpoint"
        else:
            verdict[stage.name] = "run"
            wanted |= set(stage.inputs.values())
    return {s.name: verdict[s.name] for s in stages[:-1]}


def _command_overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def compose_stage(overrides: Sequence[str], config_dir: Optional[Path] = None) -> DictConfig:
    """``train.py``'s config composed from ``overrides`` (inside a Hydra app, its own config search path;
    otherwise ``config_dir``, default the repository's ``configs/``)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return compose("train", overrides=list(overrides))
    with initialize_config_dir(config_dir=str(config_dir or CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def _is_rank_zero() -> bool:
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def _write_json(obj: dict[str, Any], path: Path) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _finish_wandb() -> None:
    """End the W&B run of a stage, so that the next stage's logger starts its own run."""
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


def _run_stage(stage_cfg: DictConfig, stage: Stage, run_dir: Path, index: int, total: int) -> dict[str, Any]:
    """Run one stage (or skip it when finished before); returns its record for ``pipeline.json``."""
    from .training import train

    out = run_dir / stage.name
    marker = out / STAGE_FILE
    ckpt = stage_checkpoint(run_dir, stage.name)
    rank0 = _is_rank_zero()
    if marker.is_file() and ckpt.is_file():
        record = json.loads(marker.read_text())
        if rank0:
            log.info("stage %d/%d %s: finished before (%s), skipped", index, total, stage.name, marker)
            if record.get("overrides") != list(stage.overrides):
                log.warning("stage %s was finished with the overrides %s, now %s; its checkpoint is reused "
                            "(delete %s to train it again)", stage.name, record.get("overrides"), stage.overrides, out)
        return {**record, "status": "finished before"}
    with open_dict(stage_cfg):
        stage_cfg.paths.output_dir = str(out)
        # one W&B run per stage (named MODEL-DATA-ID by mmzoo.run_info), grouped by the pipeline's run
        stage_cfg.group = stage_cfg.get("group") or run_dir.name
        stage_cfg.pipeline = {"stages": {}}
        resumed = ckpt.is_file()
        if resumed:  # interrupted before: continue from its own last checkpoint
            stage_cfg.ckpt_path = str(ckpt)
    if rank0:
        log.info("stage %d/%d %s: %s%s", index, total, stage.name, out,
                 f" (resuming from {ckpt})" if resumed else "")
    handler = None
    if rank0:
        out.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(stage_cfg, out / "config.yaml")  # the stage's composed config, hand-off paths included
        handler = logging.FileHandler(out / "train.log")
        handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
        logging.getLogger().addHandler(handler)
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        metrics = train(stage_cfg)
    finally:
        if handler is not None:
            logging.getLogger().removeHandler(handler)
            handler.close()
        _finish_wandb()
    record = {"stage": stage.name, "run_dir": str(out), "checkpoint": str(ckpt), "overrides": list(stage.overrides),
              "wall_s": round(time.perf_counter() - t0, 1), "cpu_s": round(time.process_time() - c0, 1),
              "resumed": resumed, "metrics": metrics}
    if rank0:
        _write_json(record, marker)
        log.info("stage %d/%d %s: done in %.1f s, checkpoint %s", index, total, stage.name, record["wall_s"], ckpt)
    return {**record, "status": "resumed" if resumed else "trained"}


def run_pipeline(cfg: DictConfig, overrides: Optional[Sequence[str]] = None,
                 config_dir: Optional[Path] = None) -> dict[str, float]:
    """Run the stages of ``cfg.pipeline`` in order, then the command ``cfg`` itself as the last stage.

    Args:
        cfg: the composed ``train.py`` config whose ``pipeline.stages`` lists the stages.
        overrides: the command-line overrides that composed ``cfg`` (carried into earlier stages by group;
            default: Hydra's record of the command line, none outside a Hydra app).
        config_dir: where earlier stages' configs are composed from outside a Hydra app (default: the
            repository's ``configs/``).

    Returns:
        The last stage's metrics (also in ``RUN/<last stage>/metrics.json`` and ``RUN/metrics.json``).
    """
    from .training import train

    stages = parse_stages(cfg.get("pipeline"))
    if not stages:
        raise ValueError("pipeline.stages is empty: nothing to run (use mmzoo.training.train for a single run)")
    overrides = _command_overrides() if overrides is None else list(overrides)
    default_carry = list((cfg.pipeline.get("carry") or []))
    run_dir = Path(cfg.paths.output_dir)
    last = stages[-1]
    verdicts = plan(cfg, stages)
    todo = [s for s in stages[:-1] if verdicts[s.name] == "run"]
    rank0 = _is_rank_zero()

    final_cfg = copy.deepcopy(cfg)
    with open_dict(final_cfg):
        final_cfg.pipeline = {"stages": {}}
    if not todo:  # every earlier stage is given: the command is a single run in RUN, as without a pipeline
        if rank0:
            for name, why in verdicts.items():
                log.info("stage %s: %s", name, why)
        return train(final_cfg)
    if cfg.get("ckpt_path") is not None:
        raise ValueError(f"ckpt_path={cfg.ckpt_path} with a pipeline of stages: run the same command again with "
                         f"hydra.run.dir={run_dir}; every stage resumes from its own checkpoints/last.ckpt")

    total = len(todo) + 1
    run_dir.mkdir(parents=True, exist_ok=True)
    if rank0:
        log.info("pipeline of %d stages in %s: %s", total, run_dir, " -> ".join(s.name for s in [*todo, last]))
        for name, why in verdicts.items():
            if why != "run":
                log.info("stage %s: %s", name, why)
    # every stage's config first: a wrong key fails before any stage has trained
    configs = []
    for stage in [*todo, last]:
        where = f"pipeline.stages.{stage.name}"
        if stage is last:
            stage_cfg = final_cfg
        else:
            carry = default_carry if stage.carry is None else stage.carry
            stage_cfg = compose_stage([*carried_overrides(overrides, carry), *stage.overrides, "pipeline=none"],
                                      config_dir)
        for key, source in stage.inputs.items():
            if verdicts[source] != "run" or (stage is last and _is_set(cfg, key)):
                continue  # the command gives that input itself, or its stage does not run
            with open_dict(stage_cfg):
                _set_key(stage_cfg, key, str(stage_checkpoint(run_dir, source)), f"{where}.inputs")
        configs.append(stage_cfg)
    records = [_run_stage(stage_cfg, stage, run_dir, index, total)
               for index, (stage, stage_cfg) in enumerate(zip([*todo, last], configs), start=1)]

    metrics = records[-1]["metrics"]
    if rank0:
        _write_json({"run_dir": str(run_dir), "stages": records}, run_dir / "pipeline.json")
        _write_json(metrics, run_dir / "metrics.json")
        lines = [f"pipeline in {run_dir}:"]
        for r in records:
            lines.append(f"  {r['stage']:<12} {r['status']:<16} {r['wall_s']:>9.1f} s  {r['checkpoint']}")
        lines.append("  (seconds: wall time of each stage when it ran; CPU time of this process in pipeline.json)")
        print("\n".join(lines))
    return metrics
