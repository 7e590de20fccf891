"""Train or test any model of this project from YAML configs: the CompVis command line on Lightning 2.x.

    python main.py --base configs/latent-diffusion/ldm.yaml -t
    python main.py --base configs/demo/ldm.yaml -t model.params.lambda_image=0.05 lightning.trainer.max_steps=100
    python main.py -r logs/2025-01-01T00-00-00_ldm -t         # resume training (its configs are reloaded)
    python main.py -r logs/2025-01-01T00-00-00_ldm            # test it (CompVis: -r without -t does not train)

Runs live in ``<logdir>/<timestamp>_<name>/{checkpoints,configs,images,tensorboard}``.
Mistakes in configs or on the command line end with one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
from pathlib import Path

from ldm.cli import run_main
from ldm.config import split_overrides
from ldm.util import ConfigError

EXIT_TRAINING_FAILED = 1
# DDP re-executes this script once per extra rank: they must all agree on the run directory.
_RUN_TIMESTAMP_ENV = "LDM_RUN_TIMESTAMP"


def str2bool(v: str | bool) -> bool:
    if isinstance(v, bool):
        return v
    if v.lower() in ("yes", "true", "t", "y", "1"):
        return True
    if v.lower() in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"boolean value expected, got {v!r}")


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", "--name", type=str, default="", help="postfix of the run directory name")
    p.add_argument("-r", "--resume", type=str, default="", help="a checkpoint or a run directory to resume")
    p.add_argument("-b", "--base", nargs="*", metavar="base_config.yaml", default=[],
                   help="config files, merged left to right; key=value arguments are merged last")
    p.add_argument("-t", "--train", type=str2bool, const=True, default=False, nargs="?", help="train")
    p.add_argument("--no-test", type=str2bool, const=True, default=False, nargs="?", help="skip testing")
    p.add_argument("-s", "--seed", type=int, default=23, help="seed for seed_everything")
    p.add_argument("-f", "--postfix", type=str, default="", help="appended to the run directory name")
    p.add_argument("-l", "--logdir", type=str, default="logs", help="folder that holds the runs")
    p.add_argument("--scale_lr", type=str2bool, nargs="?", const=True, default=True,
                   help="lr = accumulate x devices x nodes x batch x base_lr (default on)")
    p.add_argument("--gpus", type=str, default=None,
                   help="CompVis compatibility: '0,' or '0,1' selects CUDA devices (prefer lightning.trainer.devices)")
    return p


def resolve_run(opt: argparse.Namespace) -> tuple[str, str, str | None, list[str]]:
    """Return (logdir, nowname, checkpoint to resume or None, config files to load)."""
    now = os.environ.get(_RUN_TIMESTAMP_ENV) or datetime.datetime.now().strftime("%Y-%m-%dT%H-%M-%S")
    os.environ[_RUN_TIMESTAMP_ENV] = now
    if opt.name and opt.resume:
        raise ConfigError("-n/--name and -r/--resume cannot be given together: a resumed run keeps its name")
    if opt.resume:
        from ldm.inference.run_loading import resolve_run as resolve_run_files

        run = resolve_run_files(opt.resume, opt.base)  # the same rules as for sampling
        return str(run.logdir), run.logdir.name, str(run.checkpoint), [str(c) for c in run.configs]
    if not opt.base:
        raise ConfigError("no config given: use --base CONFIG.yaml (or -r RUN_DIR to resume)")
    name = f"_{opt.name}" if opt.name else "_" + Path(opt.base[0]).name.split(".")[0]
    nowname = now + name + opt.postfix
    return os.path.join(opt.logdir, nowname), nowname, None, list(opt.base)


def check_checkpoint_file(path: str) -> None:
    """Refuse, in one line, a checkpoint that cannot be read as plain data before Lightning reads it."""
    from ldm.util import load_checkpoint

    ckpt = load_checkpoint(path)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ConfigError(f"cannot resume from {path!r}: not a Lightning checkpoint (no state_dict)")


def count_devices(trainer_cfg: dict) -> int:
    """Devices per node that the trainer settings select (for the learning-rate scaling)."""
    import torch

    accelerator = str(trainer_cfg.get("accelerator", "auto"))
    devices = trainer_cfg.get("devices", "auto")
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if isinstance(devices, (list, tuple)):
        return len(devices)
    if isinstance(devices, str):
        if devices == "auto":
            return max(1, torch.cuda.device_count()) if on_gpu else 1
        if "," in devices:
            return len([d for d in devices.split(",") if d.strip()])
        devices = int(devices)
    if devices == -1:
        return max(1, torch.cuda.device_count()) if on_gpu else (os.cpu_count() or 1)
    return max(1, int(devices))


def build_trainer_kwargs(opt: argparse.Namespace, lightning_config) -> dict:
    from ldm.config import to_container

    trainer_cfg = to_container(lightning_config.get("trainer"))
    if opt.gpus is not None and opt.gpus.strip(","):
        trainer_cfg["accelerator"] = "gpu"
        trainer_cfg["devices"] = opt.gpus if opt.gpus.endswith(",") or "," in opt.gpus else opt.gpus + ","
    return trainer_cfg


def run(opt: argparse.Namespace, overrides: list[str]) -> int:
    import pytorch_lightning as pl
    from omegaconf import OmegaConf

    from ldm.callbacks import EmergencyCheckpoint, ImageLogger, NonFiniteLossError, NonFiniteLossGuard, SetupCallback
    from ldm.config import apply_overrides, load_configs, to_container
    from ldm.util import instantiate_from_config

    sys.path.insert(0, os.getcwd())  # targets in the user's working tree import, as in CompVis
    logdir, nowname, ckpt, config_files = resolve_run(opt)
    config = apply_overrides(load_configs(config_files), overrides)
    for section in ("model", "data"):
        if section not in config:
            raise ConfigError(f"the config has no '{section}' section (files: {', '.join(config_files)})")
    lightning_config = config.pop("lightning", OmegaConf.create())
    trainer_kwargs = build_trainer_kwargs(opt, lightning_config)

    ckptdir, cfgdir = os.path.join(logdir, "checkpoints"), os.path.join(logdir, "configs")
    now = os.environ[_RUN_TIMESTAMP_ENV]
    pl.seed_everything(opt.seed, workers=True)

    model = instantiate_from_config(config.model)
    data = instantiate_from_config(config.data)
    if hasattr(data, "dataset_configs"):  # build the datasets now: a bad data config fails before the run folder exists
        data.setup("fit")

    # Lightning refuses accumulate_grad_batches with manual optimisation: the model does it itself.
    accumulate = int(trainer_kwargs.get("accumulate_grad_batches", 1) or 1)
    if not model.automatic_optimization and "accumulate_grad_batches" in trainer_kwargs:
        trainer_kwargs.pop("accumulate_grad_batches")
        model.accumulate_grad_batches = accumulate

    callbacks_cfg = OmegaConf.merge(default_callbacks(now, logdir, ckptdir, cfgdir, config, lightning_config),
                                    lightning_config.get("callbacks") or {})
    callbacks = []
    for name, cb_cfg in callbacks_cfg.items():
        if cb_cfg is None or cb_cfg.get("disabled", False):
            continue
        if name == "setup":  # holds configs: built here, not from YAML
            callbacks.append(SetupCallback(**to_container(cb_cfg.params), config=config,
                                           lightning_config=lightning_config))
            continue
        callbacks.append(instantiate_from_config(cb_cfg))
    callbacks.append(NonFiniteLossGuard())
    callbacks.append(model_checkpoint(model, ckptdir, lightning_config))
    callbacks.append(EmergencyCheckpoint(ckptdir))
    logger = make_logger(logdir, lightning_config)
    if logger is not None:
        callbacks.append(pl.callbacks.LearningRateMonitor(logging_interval="step"))
    trainer_kwargs.setdefault("default_root_dir", logdir)
    trainer = pl.Trainer(**trainer_kwargs, logger=logger if logger is not None else False, callbacks=callbacks)

    base_lr = float(config.model.get("base_learning_rate", 1e-4))
    batch_size = int(config.data.params.get("batch_size", 1))
    ndevices = count_devices(trainer_kwargs) * int(trainer_kwargs.get("num_nodes", 1))
    if opt.scale_lr:
        model.learning_rate = accumulate * ndevices * batch_size * base_lr
        pl.utilities.rank_zero_info(
            f"Setting learning rate to {model.learning_rate:.2e} = {accumulate} (accumulate_grad_batches) "
            f"* {ndevices} (devices x nodes) * {batch_size} (batch size) * {base_lr:.2e} (base_learning_rate)")
    else:
        model.learning_rate = base_lr
        pl.utilities.rank_zero_info(f"++++ NOT USING LR SCALING ++++\nSetting learning rate to {base_lr:.2e}")

    if ckpt is not None:
        check_checkpoint_file(ckpt)
    if opt.train:
        try:
            # weights_only: a checkpoint is data, it must not run code (whatever TORCH_FORCE_* says)
            trainer.fit(model, data, ckpt_path=ckpt, weights_only=True)
        except SystemExit as e:
            if type(e).__name__ == "SIGTERMException":
                print(f"Training stopped by SIGTERM; last checkpoint in {ckptdir}", file=sys.stderr)
                return 143
            raise
        except NonFiniteLossError as e:
            print(f"error: {e}; last checkpoint in {ckptdir}", file=sys.stderr)
            return EXIT_TRAINING_FAILED
    has_test = getattr(data, "has_test", False)
    if not opt.train and (opt.no_test or not has_test):
        # CompVis's -r without -t tests; with nothing to test it would silently do nothing
        what = "the run" if opt.resume else "the model"
        raise ConfigError(f"nothing to do: without -t main.py only tests {what}, and "
                          f"{'--no-test was given' if opt.no_test else 'the config has no data.params.test split'}; "
                          f"add -t to {'resume training' if opt.resume else 'train'}")
    if not opt.no_test and not trainer.interrupted and has_test:
        trainer.test(model, data, ckpt_path=None if opt.train else ckpt, weights_only=True)
        if not opt.train:
            print(f"tested {ckpt or 'the model'} (add -t to resume training)")
    return 0


def default_callbacks(now: str, logdir: str, ckptdir: str, cfgdir: str, config, lightning_config) -> dict:
    return {
        "setup": {"target": "ldm.callbacks.SetupCallback",
                  "params": {"now": now, "logdir": logdir, "ckptdir": ckptdir, "cfgdir": cfgdir}},
        "image_logger": {"target": "ldm.callbacks.ImageLogger",
                         "params": {"batch_frequency": 750, "max_images": 4, "clamp": True,
                                    "save_dir": logdir}},
    }


def model_checkpoint(model, ckptdir: str, lightning_config):
    """ModelCheckpoint on ``model.monitor`` (top 3) plus ``last.ckpt``; ``lightning.modelcheckpoint``
    overrides its parameters, as in CompVis."""
    import pytorch_lightning as pl
    from omegaconf import OmegaConf

    from ldm.config import to_container

    params = {"dirpath": ckptdir, "filename": "{epoch:06}-{step:09}", "verbose": True, "save_last": True}
    monitor = getattr(model, "monitor", None)
    if monitor:
        params.update(monitor=monitor, save_top_k=3)
    user = lightning_config.get("modelcheckpoint") or OmegaConf.create()
    params.update(to_container(user.get("params")) if "params" in user else to_container(user))
    return pl.callbacks.ModelCheckpoint(**params)


def make_logger(logdir: str, lightning_config):
    """TensorBoard by default (``<run>/tensorboard``); ``lightning.logger`` may name another or
    ``false`` to switch logging off."""
    from pytorch_lightning.loggers import TensorBoardLogger

    from ldm.util import instantiate_from_config

    cfg = lightning_config.get("logger", None)
    if cfg is False:
        return None
    if cfg:
        return instantiate_from_config(cfg)
    return TensorBoardLogger(save_dir=logdir, name="", version="tensorboard", default_hp_metric=False)


def main(argv: list[str] | None = None) -> int:
    parser = get_parser()
    args, overrides = split_overrides(list(sys.argv[1:] if argv is None else argv))
    opt, unknown = parser.parse_known_args(args)
    unknown += overrides
    return run_main(lambda: run(opt, unknown), None, ConfigError)


if __name__ == "__main__":
    sys.exit(main())
