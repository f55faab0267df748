"""Transcribe and evaluate corpora on a Ray cluster: one machine to many, resumable, with pseudo-labels.

The flow: inputs -> :mod:`~whisper_zh.distributed.plan` (groups of files, cut the way
:meth:`~whisper_zh.transcriber.Transcriber.transcribe_iter` cuts them) -> a Ray Data pipeline
(:mod:`~whisper_zh.distributed.pipeline`) whose actor pool holds one :class:`~whisper_zh.transcriber.Transcriber`
per actor (:mod:`~whisper_zh.distributed.worker`) -> the job's output directory
(:mod:`~whisper_zh.distributed.store`: sharded JSONL, written by the driver only, each shard atomically) ->
optionally a pseudo-label manifest (:mod:`~whisper_zh.distributed.pseudolabels`).

Only :mod:`~whisper_zh.distributed.pipeline` imports Ray; everything else here is plain Python and runs without it.
"""
