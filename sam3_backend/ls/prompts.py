"""Label Studio interactive context -> typed prompts for the engine.

Two pure steps, each testable alone:

* ``parse_context(context, config)`` reads ``params.context`` of a ``/predict`` call into an
  ``InteractiveQuery`` in percent space, validated, without needing the image.
* ``to_engine_prompts(query, width, height)`` turns it into pixel-space ``GeometryPrompt``s (SAM
  style, one per object) or a SAM 3 ``ConceptPrompt``.

What Label Studio 1.23.2 sends (see tests/fixtures/payloads-1.23.2.json): ``{"result": [...]}``
with the smart regions. Keypoints carry a top-level ``is_positive`` (Alt-click => false, missing
=> positive) and accumulate across clicks. Rectangles carry no ``is_positive``; there can be
several. Regions that came from predictions (``origin: "prediction"``, e.g. an accepted
suggestion or a prelabel) ride along in the context but are not prompts: only the user's own
regions are. A ``textarea`` result (or a ``text`` key of the context) is a typed concept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from ..errors import BadRequest
from ..types import Box, ConceptPrompt, GeometryPrompt, Point
from .geometry import check_ls_rect, check_percent, ls_rect_to_box, percent_to_pixels
from .label_config import ImageProjectConfig

MAX_TEXT_CHARS = 256

_KEYPOINT_TYPES = {"keypointlabels", "keypoint"}
_RECTANGLE_TYPES = {"rectanglelabels", "rectangle"}
# Region types that may ride along in a context but are not prompts: ignored.
_IGNORED_TYPES = {
    "brushlabels",
    "brush",
    "polygonlabels",
    "polygon",
    "ellipselabels",
    "ellipse",
    "magicwand",
    "bitmask",
    "bitmasklabels",
    "choices",
    "taxonomy",
    "number",
    "rating",
    "datetime",
}


@dataclass(frozen=True)
class KeypointPrompt:
    """A click at (x%, y%) of the image; ``positive=False`` for background (Alt-click)."""

    x: float
    y: float
    positive: bool = True
    label: str | None = None


@dataclass(frozen=True)
class RectanglePrompt:
    """A Label Studio rectangle: top-left (x%, y%) before rotation, size in %, rotation in degrees."""

    x: float
    y: float
    width: float
    height: float
    rotation: float = 0.0
    label: str | None = None


@dataclass(frozen=True)
class InteractiveQuery:
    """The prompts of one interactive request, in percent space.

    label: the label of the prompt regions (the first keypoint/rectangle label in request order),
    for labelling the output; when there is none and the typed text names one of the project's
    labels, that label.
    """

    keypoints: tuple[KeypointPrompt, ...] = ()
    rectangles: tuple[RectanglePrompt, ...] = ()
    text: str | None = None
    label: str | None = None

    def is_empty(self) -> bool:
        return not self.keypoints and not self.rectangles and not self.text


@dataclass(frozen=True)
class EnginePrompts:
    """Pixel-space prompts for the engine: either SAM-style objects or one SAM 3 concept.

    objects: one ``GeometryPrompt`` per object to segment. object_labels: the label for each
    object (same length as ``objects``; None when the prompts carried none). concept: a typed
    concept with optional exemplar boxes. An empty query gives neither.
    """

    objects: tuple[GeometryPrompt, ...] = ()
    concept: ConceptPrompt | None = None
    object_labels: tuple[str | None, ...] = ()

    def is_empty(self) -> bool:
        return not self.objects and self.concept is None


def _region_name(item: dict, index: int) -> str:
    region_id = item.get("id")
    return f"region {region_id!r}" if region_id is not None else f"region #{index}"


def _number(value: object, key: str, what: str) -> float:
    if value is None:
        raise BadRequest(f"{what} has no value.{key}")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadRequest(f"{what} has value.{key}={value!r}; it must be a finite number")
    return float(value)


def _first_label(value: dict, result_type: str) -> str | None:
    for key in (result_type, "labels"):
        labels = value.get(key)
        if isinstance(labels, list) and labels and isinstance(labels[0], str):
            return labels[0]
    return None


def _texts(value: object, what: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise BadRequest(f"{what} must be a string or a list of strings, got {value!r}")
    return [item.strip() for item in value if item.strip()]


def context_results(context: object) -> list | None:
    """``params.context.result`` of a ``/predict`` call: None for a batch request (no context),
    the regions otherwise (``[]`` after Submit); BadRequest when it is not shaped like that."""
    if context is None:
        return None
    if not isinstance(context, dict):
        raise BadRequest(f"params.context must be an object with a 'result' list, got {type(context).__name__}")
    results = context.get("result")
    if results is None:
        return []
    if not isinstance(results, list):
        raise BadRequest("params.context.result must be a list of regions")
    return results


def parse_context(context: dict | None, config: ImageProjectConfig) -> InteractiveQuery | None:
    """Parse ``params.context`` of a ``/predict`` call.

    Returns None for ``context=None`` (a batch prelabel request) and an empty query for
    ``{"result": []}`` (sent after Submit). Raises ``BadRequest`` for regions from controls that
    are not on the project's image, unknown region types, and malformed values.
    """
    results = context_results(context)
    if results is None:
        return None

    keypoints: list[tuple[str | None, KeypointPrompt]] = []
    rectangles: list[tuple[str | None, RectanglePrompt]] = []
    extra_labels: dict[str, str] = {}  # region id -> label from a generic <Labels> result
    texts = _texts(context.get("text"), "params.context.text")

    for index, item in enumerate(results):
        if not isinstance(item, dict):
            raise BadRequest(f"params.context.result[{index}] must be an object, got {type(item).__name__}")
        what = _region_name(item, index)
        result_type = item.get("type")
        if result_type == "relation" or item.get("origin") == "prediction":
            continue  # relations and earlier predictions are not prompts
        if not isinstance(result_type, str):
            raise BadRequest(f"{what} has no 'type'")
        from_name = item.get("from_name")
        control = config.control(from_name) if isinstance(from_name, str) else None
        if control is None:
            known = ", ".join(tag.name for tag in config.controls) or "none"
            raise BadRequest(
                f'{what} comes from "{from_name}", which is not a control on image "{config.image_name}" '
                f"in this project's label config (controls there: {known}); reconnect the backend after "
                "changing the labeling interface"
            )
        to_name = item.get("to_name", config.image_name)
        if to_name != config.image_name:
            raise BadRequest(f'{what} targets "{to_name}", but this backend segments image "{config.image_name}"')
        if result_type != control.result_type:
            raise BadRequest(
                f'{what} has type "{result_type}", but control "{control.name}" is a {control.kind} '
                f'(type "{control.result_type}")'
            )
        value = item.get("value")
        if not isinstance(value, dict):
            raise BadRequest(f"{what} has no 'value' object")
        region_id = item.get("id") if isinstance(item.get("id"), str) else None
        label = _first_label(value, result_type)

        if result_type in _KEYPOINT_TYPES:
            what = f"keypoint {what}"
            x = check_percent(_number(value.get("x"), "x", what), "x", "keypoint")
            y = check_percent(_number(value.get("y"), "y", what), "y", "keypoint")
            positive = item.get("is_positive", True)
            if positive is None:
                positive = True
            if not isinstance(positive, bool):
                raise BadRequest(f"{what} has is_positive={positive!r}; it must be true or false")
            keypoints.append((region_id, KeypointPrompt(x, y, positive, label)))
        elif result_type in _RECTANGLE_TYPES:
            what = f"rectangle {what}"
            numbers = [_number(value.get(key), key, what) for key in ("x", "y", "width", "height")]
            rotation = value.get("rotation", 0.0)
            rotation = 0.0 if rotation is None else _number(rotation, "rotation", what)
            x, y, w, h, rotation = check_ls_rect(*numbers, rotation, what="rectangle")
            rectangles.append((region_id, RectanglePrompt(x, y, w, h, rotation, label)))
        elif result_type == "textarea":
            if config.text_prompt is not None and control.name == config.text_prompt.name:
                entries = _texts(value.get("text"), f"{what} value.text")
                if entries:
                    texts.append(entries[-1])  # the latest entry is the current prompt
        elif result_type == "labels":
            if region_id is not None and label is not None:
                extra_labels[region_id] = label
        elif result_type in _IGNORED_TYPES:
            continue
        else:
            raise BadRequest(
                f'{what} has type "{result_type}", which this backend cannot use as a prompt; '
                "use keypoints, rectangles or a text box"
            )

    def labelled(pairs):
        out = []
        for region_id, prompt in pairs:
            if prompt.label is None and region_id in extra_labels:
                prompt = replace(prompt, label=extra_labels[region_id])
            out.append(prompt)
        return tuple(out)

    points, rects = labelled(keypoints), labelled(rectangles)
    text = texts[-1] if texts else None
    if text is not None and len(text) > MAX_TEXT_CHARS:
        raise BadRequest(
            f"the typed prompt is {len(text)} characters long; use a short noun phrase "
            f"(at most {MAX_TEXT_CHARS} characters)"
        )
    text, text_label = _split_text_label(text, config)
    label = next((p.label for p in (*points, *rects) if p.label is not None), None) or text_label
    if label is None and text is not None:
        label = next((known for known in config.labels if _same_text(known, text, config)), None)
    return InteractiveQuery(keypoints=points, rectangles=rects, text=text, label=label)


def _split_text_label(text: str | None, config: ImageProjectConfig) -> tuple[str | None, str | None]:
    """``"brown cat_Cat"`` → prompt "brown cat", label "Cat": the convention of Label Studio's
    Grounding DINO/SAM examples for prompting with one phrase and labelling with another. Only
    when the part after the last underscore is one of the project's labels."""
    if not text or "_" not in text:
        return text, None
    phrase, _, suffix = text.rpartition("_")
    match = next((label for label in config.labels if label.casefold() == suffix.strip().casefold()), None)
    if match is None or not phrase.strip():
        return text, None
    return phrase.strip(), match


def _same_text(label: str, text: str, config: ImageProjectConfig) -> bool:
    folded = text.casefold()
    return label.casefold() == folded or config.concept_text(label).casefold() == folded


def _box(rect: RectanglePrompt, width: int, height: int) -> Box:
    return ls_rect_to_box(rect.x, rect.y, rect.width, rect.height, rect.rotation, width, height)


def _point(keypoint: KeypointPrompt, width: int, height: int) -> Point:
    x, y = percent_to_pixels(keypoint.x, keypoint.y, width, height, what="keypoint")
    return Point(x, y, keypoint.positive)


def _area(box: Box) -> float:
    return (box.x1 - box.x0) * (box.y1 - box.y0)


def to_engine_prompts(query: InteractiveQuery, width: int, height: int) -> EnginePrompts:
    """Turn a query into pixel-space prompts for a ``width`` x ``height`` image.

    With text: a concept prompt; rectangles become positive exemplar boxes, keypoints are ignored.
    Without text:
      * no rectangle: one object from all points;
      * one rectangle: one object, the rectangle plus all points;
      * several rectangles: one object per rectangle (in request order); each point joins the
        smallest rectangle containing it (the first on ties); points inside none form one more
        object, last, when at least one of them is positive (background clicks outside every
        box are dropped).
    An object needs a box or a positive point: negative clicks alone give no object.
    """
    if query.text:
        exemplars = tuple(_box(rect, width, height) for rect in query.rectangles)
        return EnginePrompts(concept=ConceptPrompt(text=query.text, exemplars=exemplars))

    points = [(_point(kp, width, height), kp.label) for kp in query.keypoints]
    boxes = [(_box(rect, width, height), rect.label) for rect in query.rectangles]

    def label_of(*candidates: str | None) -> str | None:
        return next((c for c in candidates if c is not None), query.label)

    if len(boxes) <= 1:
        box, box_label = boxes[0] if boxes else (None, None)
        if box is None and not any(point.positive for point, _ in points):
            return EnginePrompts()
        obj = GeometryPrompt(points=tuple(point for point, _ in points), box=box)
        first_point_label = next((lab for _, lab in points if lab is not None), None)
        return EnginePrompts(objects=(obj,), object_labels=(label_of(box_label, first_point_label),))

    members: list[list[tuple[Point, str | None]]] = [[] for _ in boxes]
    loose: list[tuple[Point, str | None]] = []
    for point, point_label in points:
        containing = [i for i, (box, _) in enumerate(boxes) if box.contains(point)]
        if not containing:
            loose.append((point, point_label))
            continue
        smallest = min(containing, key=lambda i: (_area(boxes[i][0]), i))
        members[smallest].append((point, point_label))

    objects, labels = [], []
    for (box, box_label), group in zip(boxes, members):
        objects.append(GeometryPrompt(points=tuple(p for p, _ in group), box=box))
        labels.append(label_of(box_label, *(lab for _, lab in group)))
    if any(point.positive for point, _ in loose):
        objects.append(GeometryPrompt(points=tuple(p for p, _ in loose)))
        labels.append(label_of(*(lab for _, lab in loose)))
    return EnginePrompts(objects=tuple(objects), object_labels=tuple(labels))


__all__ = [
    "EnginePrompts",
    "InteractiveQuery",
    "KeypointPrompt",
    "MAX_TEXT_CHARS",
    "RectanglePrompt",
    "context_results",
    "parse_context",
    "to_engine_prompts",
]
