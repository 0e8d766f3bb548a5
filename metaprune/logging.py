"""One small facade over wandb / nothing. A logging failure never kills a run: it warns once and goes quiet."""
from __future__ import annotations

import os
import warnings


class Logger:
    def log(self, metrics: dict, step: int | None = None) -> None: ...

    def summary(self, metrics: dict) -> None: ...

    def artifact(self, path, name: str, kind: str = "model") -> None: ...

    def finish(self) -> None: ...


class NoLogger(Logger):
    pass


class WandbLogger(Logger):
    """wandb, online or offline. Online, ``init_timeout`` seconds bound the wait for the server: past it (no
    network, server down) the run warns once and logs offline instead (``wandb sync`` uploads it later)."""

    def __init__(self, project="metaprune", entity=None, mode="offline", config=None, tags=(), name=None, dir=None,
                 init_timeout: float = 5.0):
        if isinstance(init_timeout, bool) or not isinstance(init_timeout, (int, float)) or not init_timeout > 0:
            raise ValueError(f"logger.init_timeout={init_timeout!r} is invalid: must be a number of seconds > 0")
        self._run = None
        try:
            import wandb

            os.environ.setdefault("WANDB_SILENT", "true")
            kw = dict(project=project, entity=entity, config=config, tags=list(tags or []), name=name, dir=dir,
                      reinit="finish_previous")
            try:
                self._run = wandb.init(mode=mode, settings=wandb.Settings(init_timeout=float(init_timeout)), **kw)
            except Exception as e:
                if mode == "offline":
                    raise
                warnings.warn(f"wandb could not start online within logger.init_timeout={init_timeout:g} s "
                              f"({str(e).splitlines()[0] if str(e) else type(e).__name__}); this run logs offline "
                              "(upload it later with `wandb sync`)")
                self._run = wandb.init(mode="offline", **kw)
        except Exception as e:  # never let logging take a run down
            self._fail("init", e)

    def _fail(self, what, e):
        warnings.warn(f"wandb {what} failed, logging disabled for this run: {e}")
        self._run = None

    def log(self, metrics, step=None):
        if self._run is not None:
            try:
                self._run.log(metrics, step=step)
            except Exception as e:
                self._fail("log", e)

    def summary(self, metrics):
        if self._run is not None:
            try:
                self._run.summary.update(metrics)
            except Exception as e:
                self._fail("summary", e)

    def artifact(self, path, name, kind="model"):
        if self._run is not None:
            try:
                import wandb

                art = wandb.Artifact(name, type=kind)
                (art.add_dir if os.path.isdir(path) else art.add_file)(str(path))
                self._run.log_artifact(art)
            except Exception as e:
                self._fail("artifact", e)

    def finish(self):
        if self._run is not None:
            try:
                self._run.finish()
            except Exception as e:
                self._fail("finish", e)


def make_logger(cfg: dict | None, config: dict | None = None, name: str | None = None, dir=None) -> Logger:
    """``cfg`` is the ``logger`` config group: ``{kind: wandb|none, project, entity, mode, tags}``."""
    cfg = dict(cfg or {"kind": "none"})
    kind = cfg.pop("kind", "none")
    if kind == "none":
        return NoLogger()
    if kind == "wandb":
        return WandbLogger(config=config, name=name, dir=dir, **cfg)
    raise ValueError(f"logger.kind={kind!r} is invalid: must be wandb or none")
