"""A project's label config, reduced to what an image segmentation backend needs.

``parse_label_config(xml)`` finds the ``<Image>`` this backend labels and the controls on it:
the *output* controls we fill (brush, polygon, rectangle), the smart *input* controls that carry
prompts (keypoints, rectangles, a text box) and the label values, which double as SAM 3 concept
names. Parsing goes through label-studio-sdk's ``LabelInterface`` so that tag and label rules
(``alias``, nested ``<View>``s inside a control) match Label Studio's own reading of the config.

Choices made here, all deterministic:

* Several ``<Image>`` objects: the first one (in document order) that has an output control is
  used; the others are ignored. Multi-page images (``valueList``) are not supported.
* Output controls: the first ``Brush``/``BrushLabels``, the first ``Polygon``/``PolygonLabels``
  and the first ``Rectangle``/``RectangleLabels`` on that image. A ``smart="true"`` rectangle is
  both a prompt tool and an output; a ``smartOnly="true"`` one is a prompt tool only.
* Labels as Label Studio writes them: a ``<Label alias="c" value="Cat"/>`` is written as ``"c"``
  in results (the editor stores the alias when there is one), so ``labels`` holds ``"c"`` and
  ``concept_text("c")`` is ``"Cat"``.
* Concept text: the ``<Label>``'s ``value``, or its optional ``sam3_prompt`` attribute when set,
  e.g. ``<Label value="Car" sam3_prompt="passenger car"/>``. Label Studio keeps unknown
  attributes (its config schema does not forbid extra attributes and the editor ignores them;
  label-studio-sdk's ``LabelInterface.validate()`` accepts them). The built-in ``hint`` (a hover
  tooltip for people) and ``alias`` (changes the stored value) already mean something else, so
  neither is reused for the prompt.
* Video (``<Video>`` with ``<VideoRectangle>``) is a different kind of project: it raises
  ``UnsupportedConfig`` here; ``ls.video_config.parse_video_config`` reads it (sharing
  ``_read_config``) and ``ls.video_config.parse_project_config`` dispatches between the two.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import lru_cache

from label_studio_sdk.label_interface import LabelInterface

from ..errors import BadRequest, UnsupportedConfig

# Label Studio tag names are case-insensitive in the editor; we report them in this spelling.
_CANONICAL_KINDS = {
    name.lower(): name
    for name in (
        "Brush",
        "BrushLabels",
        "Polygon",
        "PolygonLabels",
        "Rectangle",
        "RectangleLabels",
        "KeyPoint",
        "KeyPointLabels",
        "Ellipse",
        "EllipseLabels",
        "Labels",
        "TextArea",
        "Choices",
        "Taxonomy",
        "Number",
        "Rating",
        "DateTime",
        "MagicWand",
        "Bitmask",
        "BitmaskLabels",
        "Relations",
        "VideoRectangle",
        "TimelineLabels",
    )
}
_BRUSH_KINDS = ("Brush", "BrushLabels")
_POLYGON_KINDS = ("Polygon", "PolygonLabels")
_RECTANGLE_KINDS = ("Rectangle", "RectangleLabels")
_KEYPOINT_KINDS = ("KeyPoint", "KeyPointLabels")
_OUTPUT_KINDS = _BRUSH_KINDS + _POLYGON_KINDS + _RECTANGLE_KINDS

PROMPT_ATTRIBUTE = "sam3_prompt"

_EXAMPLE_OUTPUT = (
    '<BrushLabels name="label" toName="{image}"><Label value="cat"/></BrushLabels> '
    "(or PolygonLabels / RectangleLabels)"
)


def _true(value: object) -> bool:
    return str(value).strip().lower() == "true"


@dataclass(frozen=True)
class ControlTag:
    """One control tag of the config.

    kind: the tag name, e.g. 'BrushLabels', 'PolygonLabels', 'RectangleLabels', 'KeyPointLabels',
    'TextArea', 'Labels', 'Brush'. to_name: the object it targets (the first one when several).
    labels: label values as Label Studio writes them in results (alias if set), in config order;
    empty for label-less tools and for labels loaded from task data. smart: ``smart`` or
    ``smartOnly`` is "true".
    """

    name: str
    kind: str
    to_name: str
    labels: tuple[str, ...]
    smart: bool
    smart_only: bool = False
    per_region: bool = False

    @property
    def result_type(self) -> str:
        """The ``type`` of the results this control produces, e.g. 'brushlabels', 'brush'."""
        return self.kind.lower()

    @property
    def has_labels(self) -> bool:
        """True for '*Labels' controls, whose results carry the label under ``result_type``."""
        return self.kind.endswith("Labels")


class _LabelledProject:
    """What image and video project configs share: labels as concepts, controls by name."""

    concept_texts: tuple[tuple[str, str], ...]
    controls: tuple[ControlTag, ...]

    def concept_text(self, label: str) -> str:
        """The noun phrase sent to SAM 3 for ``label``: ``sam3_prompt``, else the label's value."""
        for known, text in self.concept_texts:
            if known == label:
                return text
        return label

    def control(self, name: str) -> ControlTag | None:
        """The control on this project's object called ``name``, or None."""
        for tag in self.controls:
            if tag.name == name:
                return tag
        return None


def task_media_url(task: dict, field_name: str, kind: str) -> str:
    """The URL at ``task["data"][field_name]`` (the config's ``$field``); BadRequest when missing."""
    data = task.get("data")
    url = data.get(field_name) if isinstance(data, dict) else None
    if not isinstance(url, str) or not url:
        raise BadRequest(f"task {task.get('id')} has no {kind} at data.{field_name}")
    return url


@dataclass(frozen=True)
class ImageProjectConfig(_LabelledProject):
    """What the backend needs to know about an image project. Build with ``parse_label_config``.

    image_name: the ``<Image name>``, ``to_name`` of every result. image_value: the task data key
    (``"image"`` for ``value="$image"``). brush / polygon / rectangle: the output controls on that
    image (at least one is set). keypoint: the first smart keypoint tool. text_prompt: the first
    ``<TextArea>`` on the image that is not per-region, used for typed concept prompts.
    region_labels: a generic ``<Labels>`` on the image, which labels plain Brush / Polygon /
    Rectangle regions. labels: concept names, the union of the output controls' labels (and of
    ``region_labels`` when an output has none of its own), in config order, without duplicates.
    controls: every control on the image, in config order.
    """

    image_name: str
    image_value: str
    brush: ControlTag | None
    polygon: ControlTag | None
    rectangle: ControlTag | None
    keypoint: ControlTag | None
    text_prompt: ControlTag | None
    labels: tuple[str, ...]
    region_labels: ControlTag | None = None
    controls: tuple[ControlTag, ...] = ()
    # (label, concept text) pairs; a tuple keeps the dataclass hashable.
    concept_texts: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    @property
    def outputs(self) -> tuple[ControlTag, ...]:
        """The output controls that are set, in the order brush, polygon, rectangle."""
        return tuple(tag for tag in (self.brush, self.polygon, self.rectangle) if tag is not None)


@dataclass(frozen=True)
class _Label:
    result_value: str  # what Label Studio writes in results: alias, else value
    value: str  # what people read
    prompt: str | None  # optional explicit concept text


@dataclass(frozen=True)
class _Control:
    tag: ControlTag
    to_names: tuple[str, ...]
    label_info: tuple[_Label, ...]


@dataclass(frozen=True)
class _Object:
    name: str
    kind: str
    value: str | None
    value_list: str | None
    attrs: tuple[tuple[str, str], ...] = ()  # every attribute, names lower-cased

    def attr(self, name: str) -> str | None:
        return dict(self.attrs).get(name.lower())


@dataclass(frozen=True)
class _ConfigReading:
    objects: tuple[_Object, ...]
    controls: tuple[_Control, ...]


def _read_config(xml: str) -> _ConfigReading:
    """Objects and controls of a label config, in document order (shared by image and video)."""
    if not isinstance(xml, str) or not xml.strip():
        raise UnsupportedConfig("the project has no label config; set one under Settings > Labeling Interface")
    try:
        interface = LabelInterface(xml)
    except Exception as exc:  # lxml syntax errors and the SDK's own parse errors
        raise UnsupportedConfig(f"the label config could not be parsed: {exc}") from exc

    objects = []
    for obj in interface.objects:
        attr = obj.attr or {}
        objects.append(
            _Object(
                name=obj.name,
                kind=_CANONICAL_KINDS.get(obj.tag.lower(), obj.tag),
                value=attr.get("value"),
                value_list=attr.get("valueList") or attr.get("valuelist"),
                attrs=tuple((str(k).lower(), str(v)) for k, v in attr.items()),
            )
        )

    controls = []
    for ctrl in interface.controls:
        attr = ctrl.attr or {}
        labels = []
        # labels_attrs is keyed the way Label Studio writes results (alias, else value).
        for result_value, label_tag in (ctrl.labels_attrs or {}).items():
            label_attr = label_tag.attr or {}
            value = label_attr.get("value") or result_value
            prompt = (label_attr.get(PROMPT_ATTRIBUTE) or "").strip() or None
            labels.append(_Label(result_value=result_value, value=value, prompt=prompt))
        to_names = tuple(name.strip() for name in (ctrl.to_name or []) if name.strip())
        tag = ControlTag(
            name=ctrl.name,
            kind=_CANONICAL_KINDS.get(ctrl.tag.lower(), ctrl.tag),
            to_name=to_names[0] if to_names else "",
            labels=tuple(label.result_value for label in labels),
            smart=_true(attr.get("smart")) or _true(attr.get("smartOnly")),
            smart_only=_true(attr.get("smartOnly")),
            per_region=_true(attr.get("perRegion")),
        )
        controls.append(_Control(tag=tag, to_names=to_names, label_info=tuple(labels)))
    return _ConfigReading(objects=tuple(objects), controls=tuple(controls))


def _first(controls: list[_Control], kinds: tuple[str, ...], *, output: bool = False) -> _Control | None:
    for ctrl in controls:
        if ctrl.tag.kind in kinds and not (output and ctrl.tag.smart_only):
            return ctrl
    return None


def _image_controls(reading: _ConfigReading, image: str) -> list[_Control]:
    """Controls that target ``image``, with ``to_name`` set to it (a control may list several)."""
    return [replace(ctrl, tag=replace(ctrl.tag, to_name=image)) for ctrl in reading.controls if image in ctrl.to_names]


@lru_cache(maxsize=64)
def parse_label_config(xml: str) -> ImageProjectConfig:
    """Parse a Label Studio label config into an ``ImageProjectConfig``.

    Raises ``UnsupportedConfig`` (HTTP 400) when there is no ``<Image>``, when the image has no
    brush / polygon / rectangle control to fill, for video projects, and for unparsable XML;
    the message says what to add. Results are cached per config string.
    """
    reading = _read_config(xml)
    images = [obj for obj in reading.objects if obj.kind.lower() == "image"]
    if not images:
        if any(obj.kind.lower() == "video" for obj in reading.objects):
            raise UnsupportedConfig(
                "this is a video project (<Video>): add "
                '<VideoRectangle name="box" toName="video"/> with <Labels toName="video"> to get tracks'
                " (ls.video_config.parse_video_config reads video configs)"
            )
        raise UnsupportedConfig(
            'the label config has no <Image> to segment: add <Image name="image" value="$image"/> '
            "and an output control such as " + _EXAMPLE_OUTPUT.format(image="image")
        )

    chosen = None
    for image in images:
        if any(ctrl.tag.kind in _OUTPUT_KINDS for ctrl in _image_controls(reading, image.name)):
            chosen = image
            break
    if chosen is None:
        name = images[0].name
        raise UnsupportedConfig(
            f'image "{name}" has no control this backend can fill: add ' + _EXAMPLE_OUTPUT.format(image=name)
        )

    if chosen.value_list and not chosen.value:
        raise UnsupportedConfig(
            f'image "{chosen.name}" uses valueList (several images per task), which is not supported; '
            'use value="$image" with one image per task'
        )
    value = (chosen.value or "").strip()
    if not value.startswith("$") or len(value) < 2:
        raise UnsupportedConfig(
            f'image "{chosen.name}" has value="{value}"; it must name a task data field, e.g. value="$image"'
        )

    on_image = _image_controls(reading, chosen.name)
    brush = _first(on_image, _BRUSH_KINDS, output=True)
    polygon = _first(on_image, _POLYGON_KINDS, output=True)
    rectangle = _first(on_image, _RECTANGLE_KINDS, output=True)
    keypoint = next((c for c in on_image if c.tag.kind in _KEYPOINT_KINDS and c.tag.smart), None)
    text_prompt = next((c for c in on_image if c.tag.kind == "TextArea" and not c.tag.per_region), None)
    region_labels = _first(on_image, ("Labels",))

    label_sources = []
    outputs = [ctrl for ctrl in on_image if ctrl in (brush, polygon, rectangle)]  # config order
    for output in outputs:
        if output.tag.has_labels:
            label_sources.append(output)
        elif region_labels is not None and region_labels not in label_sources:
            label_sources.append(region_labels)
    labels: list[str] = []
    concept_texts: list[tuple[str, str]] = []
    for source in label_sources:
        for label in source.label_info:
            if label.result_value in labels:
                continue
            labels.append(label.result_value)
            concept_texts.append((label.result_value, label.prompt or label.value))

    def tag_of(ctrl: _Control | None) -> ControlTag | None:
        return None if ctrl is None else ctrl.tag

    return ImageProjectConfig(
        image_name=chosen.name,
        image_value=value[1:],
        brush=tag_of(brush),
        polygon=tag_of(polygon),
        rectangle=tag_of(rectangle),
        keypoint=tag_of(keypoint),
        text_prompt=tag_of(text_prompt),
        labels=tuple(labels),
        region_labels=tag_of(region_labels),
        controls=tuple(ctrl.tag for ctrl in on_image),
        concept_texts=tuple(concept_texts),
    )


__all__ = ["ControlTag", "ImageProjectConfig", "PROMPT_ATTRIBUTE", "parse_label_config", "task_media_url"]
