"""One small facade over wandb / nothing. A logging failure never kills a run: it warns once and goes quiet.

Runs of one sweep share a wandb ``group`` and carry a ``job_type`` (train / train_meta / prune / benchmark);
:func:`active_run` names the wandb run in progress, so a result file can say where its log lives."""
from __future__ import annotations

import os
import re
import warnings

TAG_MAX = 64  # wandb refuses longer tags


def wandb_tags(tags) -> list[str]:
    """``tags`` as wandb takes them: strings of 1 to 64 characters (longer ones cut), each once, in order."""
    return list(dict.fromkeys(str(t)[:TAG_MAX] for t in tags or () if str(t)))


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
                 init_timeout: float = 5.0, group=None, job_type=None):
        if isinstance(init_timeout, bool) or not isinstance(init_timeout, (int, float)) or not init_timeout > 0:
            raise ValueError(f"logger.init_timeout={init_timeout!r} is invalid: must be a number of seconds > 0")
        self._run = None
        try:
            import wandb

            os.environ.setdefault("WANDB_SILENT", "true")
            kw = dict(project=project, entity=entity, config=config, tags=wandb_tags(tags), name=name, dir=dir,
                      group=group, job_type=job_type, reinit="finish_previous")
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
        global _ACTIVE
        if self._run is not None:
            _ACTIVE = self

    def run_info(self) -> dict | None:
        """The wandb run: id, name, group, job_type, mode and its folder (what ``wandb sync`` uploads)."""
        r = self._run
        if r is None:
            return None
        try:
            folder = getattr(r.settings, "sync_dir", None) or os.path.dirname(r.dir)
            return {"id": r.id, "name": r.name, "project": r.project, "group": r.group, "job_type": r.job_type,
                    "mode": "offline" if r.offline else "online", "dir": str(folder)}
        except Exception:  # an attribute wandb renamed must not fail the run that asks
            return {"id": getattr(r, "id", None), "name": getattr(r, "name", None)}

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

                art = wandb.Artifact(re.sub(r"[^A-Za-z0-9_.-]+", "-", name), type=kind)  # wandb's alphabet
                (art.add_dir if os.path.isdir(path) else art.add_file)(str(path))
                self._run.log_artifact(art)
            except Exception as e:
                self._fail("artifact", e)

    def finish(self):
        global _ACTIVE
        if _ACTIVE is self:
            _ACTIVE = None
        if self._run is not None:
            try:
                self._run.finish()
            except Exception as e:
                self._fail("finish", e)


_ACTIVE: WandbLogger | None = None


def active_run() -> dict | None:
    """The wandb run a :class:`WandbLogger` has started and not finished (see :meth:`WandbLogger.run_info`)."""
    return None if _ACTIVE is None else _ACTIVE.run_info()


class KeepOpen(Logger):
    """``logger`` whose ``finish`` is left to its owner: prune.py hands this to the pipeline (which finishes the
    loggers it starts) and logs the saved model as an artifact before finishing the run itself."""

    def __init__(self, logger: Logger):
        self.inner = logger

    def log(self, metrics, step=None):
        self.inner.log(metrics, step)

    def summary(self, metrics):
        self.inner.summary(metrics)

    def artifact(self, path, name, kind="model"):
        self.inner.artifact(path, name, kind)


def make_logger(cfg: dict | None, config: dict | None = None, name: str | None = None, dir=None, group=None,
                job_type=None, tags=()) -> Logger:
    """``cfg`` is the ``logger`` config group: ``{kind: wandb|none, project, entity, mode, tags, init_timeout,
    group, job_type}``; its ``group`` / ``job_type``, when set, win over the arguments (the entry point's defaults:
    the sweep's folder, its own kind), and ``tags`` are added to its tags."""
    cfg = dict(cfg or {"kind": "none"})
    kind = cfg.pop("kind", "none")
    if kind == "none":
        return NoLogger()
    if kind == "wandb":
        cfg["group"] = cfg.get("group") or group
        cfg["job_type"] = cfg.get("job_type") or job_type
        cfg["tags"] = [*(cfg.get("tags") or []), *tags]
        return WandbLogger(config=config, name=name, dir=dir, **cfg)
    raise ValueError(f"logger.kind={kind!r} is invalid: must be wandb or none")
