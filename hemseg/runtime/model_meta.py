"""What an exported model carries about itself, so that the runtime needs nothing else to use it.

The exporter writes these keys into ONNX ``metadata_props`` (all values are strings) and into the TensorRT sidecar
``model.plan.json``; the runtime reads them back with :meth:`ModelMetadata.from_props`.

Keys (prefix ``hemseg.``): ``preprocess`` (the :class:`PreprocessSpec` JSON), ``image_size``, ``threshold``,
``labels`` (JSON list or ``null``), ``version`` (hemseg version), ``checkpoint_sha256``, ``model`` (architecture
name), ``producer_versions`` (JSON object), ``precision`` (``fp32`` / ``fp16`` / ``int8``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from hemseg.runtime.preprocess import PreprocessSpec

PREFIX = "hemseg."
INPUT_NAME = "image"
OUTPUT_NAME = "logits"


class MetadataError(ValueError):
    """Metadata missing or malformed (the caller wraps it into a ModelError naming the file)."""


@dataclass(frozen=True)
class ModelMetadata:
    preprocess: PreprocessSpec
    threshold: float = 0.5
    labels: tuple[int, ...] | None = None
    model: str = "fcn_resnet50"
    version: str = ""
    checkpoint_sha256: str = ""
    precision: str = "fp32"
    producer_versions: dict[str, str] = field(default_factory=dict)
    #: the fingerprint of the dataset the checkpoint was trained on ("" when unknown): an evaluation of the exported
    #: model on that dataset is flagged as optimistic, as one of the checkpoint is
    data_fingerprint: str = ""
    #: pixel digests of the slices the checkpoint was trained and validated on (:func:`hemseg.runtime.dataset.
    #: pixel_digests`), () when unknown: an evaluation on copies of them is flagged as optimistic
    pixel_digests: tuple[str, ...] = ()
    #: whether the checkpoint's threshold was tuned on its validation split (False: an interrupted run's interim
    #: best.pt, warned of wherever the model is used; None: not recorded, an earlier hemseg's export)
    threshold_tuned: bool | None = None

    @property
    def image_size(self) -> int:
        return self.preprocess.size

    def to_props(self) -> dict[str, str]:
        return {
            PREFIX + "preprocess": self.preprocess.to_json(),
            PREFIX + "image_size": str(self.image_size),
            PREFIX + "threshold": repr(float(self.threshold)),
            PREFIX + "labels": json.dumps(list(self.labels) if self.labels is not None else None),
            PREFIX + "model": self.model,
            PREFIX + "version": self.version,
            PREFIX + "checkpoint_sha256": self.checkpoint_sha256,
            PREFIX + "precision": self.precision,
            PREFIX + "producer_versions": json.dumps(self.producer_versions, sort_keys=True),
            PREFIX + "data_fingerprint": self.data_fingerprint,
            PREFIX + "pixel_digests": ",".join(self.pixel_digests),
            PREFIX + "threshold_tuned": "" if self.threshold_tuned is None else json.dumps(self.threshold_tuned),
        }

    @classmethod
    def from_props(cls, props: Mapping[str, str]) -> "ModelMetadata":
        if PREFIX + "preprocess" not in props:
            raise MetadataError("not a hemseg model: metadata key 'hemseg.preprocess' is missing")
        try:
            spec = PreprocessSpec.from_json(props[PREFIX + "preprocess"])
            size = int(props.get(PREFIX + "image_size", spec.size))
            if size != spec.size:
                raise MetadataError(f"image_size {size} disagrees with the preprocessing spec size {spec.size}")
            labels = json.loads(props.get(PREFIX + "labels", "null"))
            threshold = float(props.get(PREFIX + "threshold", "0.5"))
            producers: Any = json.loads(props.get(PREFIX + "producer_versions", "{}"))
        except MetadataError:
            raise
        except Exception as exc:  # malformed values of any kind
            raise MetadataError(f"malformed hemseg metadata: {exc}") from None
        if not 0.0 < threshold < 1.0:
            raise MetadataError(f"threshold must be in (0, 1), got {threshold}")
        return cls(
            preprocess=spec,
            threshold=threshold,
            labels=tuple(int(v) for v in labels) if labels is not None else None,
            model=props.get(PREFIX + "model", "unknown"),
            version=props.get(PREFIX + "version", ""),
            checkpoint_sha256=props.get(PREFIX + "checkpoint_sha256", ""),
            precision=props.get(PREFIX + "precision", "fp32"),
            producer_versions=dict(producers),
            data_fingerprint=str(props.get(PREFIX + "data_fingerprint", "") or ""),
            pixel_digests=tuple(d for d in str(props.get(PREFIX + "pixel_digests", "") or "").split(",") if d),
            threshold_tuned={"true": True, "false": False}.get(str(props.get(PREFIX + "threshold_tuned", ""))),
        )
