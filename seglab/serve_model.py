"""The model side of `seglab serve`: the run's weights, one Segmenter per distinct set of request
options, and the batcher (seglab/serve.py is the HTTP side).

One worker thread takes the first waiting request, gathers those arriving within
`batch_wait_s` (up to the run's inference batch size), groups them by options and labels each
group with Segmenter.predict_batch, which runs same-size images in one forward pass.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seglab.errors import SeglabError
from seglab.text_values import parse_flag, parse_numbers, parse_size

DEFAULT_MAX_PIXELS = 4096 * 4096
DEFAULT_BATCH_WAIT_S = 0.005
MAX_SCALE = 2.0  # test scales above this multiply the memory of the largest allowed image
FORMATS = ("json", "labels", "overlay")
PROBABILITY_ENCODINGS = ("uint8", "float16")


class Refused(Exception):
    """A request the server answers with `status` and a one-line reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


@dataclass
class Job:
    image: np.ndarray  # (H, W, 3) uint8
    key: str  # the inference settings and CRF, as JSON: requests with one key share a Segmenter
    probabilities: bool
    future: concurrent.futures.Future


class ServedModel:
    """The weights of a run, a Segmenter per distinct set of request options, and the batcher."""

    def __init__(
        self,
        weights_or_run: str | Path,
        inference: dict | None = None,
        crf: str | None = None,
        device: str = "auto",
        max_pixels: int = DEFAULT_MAX_PIXELS,
        batch_wait_s: float = DEFAULT_BATCH_WAIT_S,
    ) -> None:
        from seglab.data.images import set_max_image_pixels
        from seglab.data.labels import default_palette
        from seglab.inference import Segmenter
        from seglab.runs import check_window, resolve_run, run_inference
        from seglab.weights import read_weights_meta

        self.weights, self.config = resolve_run(weights_or_run)
        if read_weights_meta(self.weights).get("task") == "instance":
            raise SeglabError(
                f"{self.weights}: seglab serve labels pixels; this is an instance model"
            )
        self.overrides = dict(inference or {})
        base = run_inference(self.config, self.overrides)
        self.segmenter = Segmenter.from_checkpoint(self.weights, device, base, crf)
        if self.segmenter.takes_depth:
            raise SeglabError(
                f"{self.weights}: an RGB-D model needs depth, which serve cannot take"
            )
        check_window(self.segmenter.model, base)
        self.classes = self.segmenter.classes
        self.names = list(self.classes.names) if self.classes else None
        k = self.segmenter.num_classes
        self.names = self.names or [f"class {i}" for i in range(k)]
        self.colors = list(self.classes.colors) if self.classes else default_palette(k)
        self.max_pixels = max_pixels
        set_max_image_pixels(max_pixels)  # seglab.data.images refuses larger uploads undecoded
        self.batch_wait_s = batch_wait_s
        self.segmenters = {self.key(base, crf): self.segmenter}
        self.stats = {"requests": 0, "images": 0, "batches": 0, "largest_batch": 0, "failed": 0}
        self.jobs: queue.Queue[Job | None] = queue.Queue()
        self.worker = threading.Thread(target=self._work, name="seglab-serve-batcher", daemon=True)
        self.worker.start()

    @staticmethod
    def key(inference, crf: str | None) -> str:
        return json.dumps({"inference": dataclasses.asdict(inference), "crf": crf}, sort_keys=True)

    def options(self, query) -> tuple[str, object, str | None]:
        """Query parameters -> (key, InferenceConfig, crf); a bad value is Refused(400)."""
        from seglab.inference import Segmenter
        from seglab.runs import run_inference

        overrides = dict(self.overrides)
        crf = self.segmenter.crf
        try:
            if "crf" in query:
                named = query["crf"].strip()
                crf = None if named.lower() in ("", "none", "off", "false", "0") else named
                crf = Segmenter.check_crf_preset(crf)
            if "mode" in query:
                overrides["mode"] = query["mode"]
            if "crop" in query:
                overrides["crop_size"] = parse_size(query["crop"], "crop")
                h, w = overrides["crop_size"]
                if h * w > self.max_pixels:
                    raise SeglabError(f"crop {h}x{w} is over the server's {self.max_pixels} pixels")
            if "scales" in query:
                overrides["scales"] = parse_numbers(query["scales"], "scales")
                if max(overrides["scales"]) > MAX_SCALE or len(overrides["scales"]) > 8:
                    raise SeglabError(f"scales: at most 8 scales, each <= {MAX_SCALE}")
            if "flip" in query:
                overrides["flip"] = parse_flag(query["flip"], "flip")
            inference = run_inference(self.config, overrides)
        except SeglabError as error:
            raise Refused(400, str(error)) from None
        return self.key(inference, crf), inference, crf

    def submit(self, image: np.ndarray, key: str, probabilities: bool) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        self.jobs.put(Job(image, key, probabilities, future))
        return future

    def close(self) -> None:
        self.jobs.put(None)
        self.worker.join(timeout=10)

    def _segmenter(self, key: str):
        """The Segmenter for one set of options (same model object, its own settings)."""
        from seglab.config import InferenceConfig
        from seglab.runs import check_window

        if key not in self.segmenters:
            settings = json.loads(key)
            inference = InferenceConfig(**settings["inference"])
            check_window(self.segmenter.model, inference)
            base = self.segmenter
            if len(self.segmenters) > 32:  # a client varying options must not grow memory
                self.segmenters = {k: v for k, v in list(self.segmenters.items())[:1]}
            self.segmenters[key] = base.with_options(inference, settings["crf"])
        return self.segmenters[key]

    def _work(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            jobs = [job]
            deadline = time.monotonic() + self.batch_wait_s
            while len(jobs) < self.segmenter.inference.batch_size:
                try:
                    job = self.jobs.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if job is None:
                    self.jobs.put(None)
                    break
                jobs.append(job)
            groups: dict[tuple[str, bool], list[Job]] = {}
            for job in jobs:
                groups.setdefault((job.key, job.probabilities), []).append(job)
            for group in groups.values():
                self._label(group)

    def _label(self, group: list[Job]) -> None:
        """Label one group in one predict_batch; if that fails, each image alone, so that one
        bad image fails only itself."""
        key, probabilities = group[0].key, group[0].probabilities
        try:
            segmenter = self._segmenter(key)
            results = segmenter.predict_batch([job.image for job in group], probabilities)
        except Exception as error:  # noqa: BLE001 - the worker must outlive any image
            if len(group) > 1:
                for job in group:
                    self._label([job])
                return
            self.stats["failed"] += 1
            group[0].future.set_exception(error)
            return
        self.stats["batches"] += 1
        self.stats["images"] += len(group)
        self.stats["largest_batch"] = max(self.stats["largest_batch"], len(group))
        for job, result in zip(group, results, strict=True):
            job.future.set_result(result)

    def describe(self) -> dict:
        """What /model answers."""
        from seglab.crf import PRESETS

        spec = self.segmenter.model.seglab_spec
        return {
            "name": spec.get("name"),
            "weights": str(self.weights),
            "num_classes": len(self.names),
            "classes": [
                {"id": i, "name": name, "color": list(color)}
                for i, (name, color) in enumerate(zip(self.names, self.colors, strict=True))
            ],
            "inference": dataclasses.asdict(self.segmenter.inference),
            "crf": self.segmenter.crf,
            "crf_presets": sorted(PRESETS),
            "device": str(self.segmenter.device),
            "variant": self.segmenter.variant,
            "formats": list(FORMATS),
            "probabilities": list(PROBABILITY_ENCODINGS),
            "max_pixels": self.max_pixels,
            "batch": {
                "wait_ms": self.batch_wait_s * 1000,
                "max_images": self.segmenter.inference.batch_size,
            },
        }


__all__ = ["ServedModel", "Refused", "one_line"]
