"""parse_label_config: which image, which controls, which labels, and clear refusals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from label_studio_sdk.label_interface import LabelInterface

from sam3_backend.errors import UnsupportedConfig
from sam3_backend.ls.label_config import ImageProjectConfig, parse_label_config

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "payloads-1.23.2.json"

# The config of the recorded project, written out in full (the fixture's copy is truncated):
# names match the recorded results: Image "image", BrushLabels "tag", KeyPointLabels "kp",
# RectangleLabels "rect".
RECORDED_CONFIG = """
<View>
  <Image name="image" value="$image" zoom="true"/>
  <BrushLabels name="tag" toName="image">
    <Label value="cat" background="#FF0000"/>
    <Label value="dog" background="#0000FF"/>
  </BrushLabels>
  <KeyPointLabels name="kp" toName="image" smart="true">
    <Label value="cat" smart="true" background="#FF0000"/>
    <Label value="dog" smart="true" background="#0000FF"/>
  </KeyPointLabels>
  <RectangleLabels name="rect" toName="image" smart="true">
    <Label value="cat" background="#FF0000"/>
    <Label value="dog" background="#0000FF"/>
  </RectangleLabels>
</View>
"""


def test_recorded_config():
    config = parse_label_config(RECORDED_CONFIG)
    assert config.image_name == "image"
    assert config.image_value == "image"
    assert config.brush.name == "tag" and config.brush.kind == "BrushLabels"
    assert config.brush.to_name == "image" and config.brush.labels == ("cat", "dog")
    assert config.polygon is None
    # A smart RectangleLabels is a prompt tool and an output.
    assert config.rectangle.name == "rect" and config.rectangle.smart
    assert config.keypoint.name == "kp" and config.keypoint.kind == "KeyPointLabels" and config.keypoint.smart
    assert config.text_prompt is None
    assert config.labels == ("cat", "dog")
    assert config.concept_text("cat") == "cat"
    assert [c.name for c in config.controls] == ["tag", "kp", "rect"]
    assert [c.name for c in config.outputs] == ["tag", "rect"]
    assert config.control("kp").result_type == "keypointlabels"
    assert config.control("nope") is None


def test_recorded_setup_schema_starts_like_our_config():
    payloads = json.loads(FIXTURES.read_text())
    schema = payloads["POST /setup  [step connect_backend_image]"]["json"]["schema"]
    assert schema.startswith('<View>\n  <Image name="image" value="$image" zoom="true"/>')


def test_config_is_frozen_and_cached():
    config = parse_label_config(RECORDED_CONFIG)
    assert parse_label_config(RECORDED_CONFIG) is config
    with pytest.raises(AttributeError):
        config.image_name = "other"  # type: ignore[misc]
    hash(config)


def test_labels_union_in_config_order_deduplicated():
    config = parse_label_config("""
        <View>
          <Image name="img" value="$url"/>
          <PolygonLabels name="poly" toName="img">
            <Label value="person"/><Label value="car"/>
          </PolygonLabels>
          <BrushLabels name="brush" toName="img">
            <Label value="car"/><Label value="tree"/>
          </BrushLabels>
          <RectangleLabels name="box" toName="img"><Label value="sign"/></RectangleLabels>
        </View>
        """)
    assert config.image_value == "url"
    assert config.labels == ("person", "car", "tree", "sign")
    assert (config.brush.name, config.polygon.name, config.rectangle.name) == ("brush", "poly", "box")
    assert config.keypoint is None


def test_first_control_of_each_kind_wins():
    config = parse_label_config("""
        <View>
          <Image name="image" value="$image"/>
          <BrushLabels name="b1" toName="image"><Label value="a"/></BrushLabels>
          <BrushLabels name="b2" toName="image"><Label value="b"/></BrushLabels>
          <Brush name="b3" toName="image"/>
        </View>
        """)
    assert config.brush.name == "b1"
    assert config.labels == ("a",)


def test_polygon_only_and_rectangle_only_configs_are_valid():
    poly = parse_label_config(
        '<View><Image name="i" value="$i"/><PolygonLabels name="p" toName="i"><Label value="x"/></PolygonLabels></View>'
    )
    assert poly.brush is None and poly.polygon.name == "p" and poly.rectangle is None
    rect = parse_label_config(
        '<View><Image name="i" value="$i"/><RectangleLabels name="r" toName="i"><Label value="x"/></RectangleLabels></View>'
    )
    assert rect.rectangle.name == "r" and rect.brush is None and rect.polygon is None


def test_plain_brush_with_generic_labels():
    config = parse_label_config("""
        <View>
          <Image name="image" value="$image"/>
          <Labels name="classes" toName="image"><Label value="cat"/><Label value="dog"/></Labels>
          <Brush name="mask" toName="image"/>
          <KeyPoint name="click" toName="image" smart="true"/>
        </View>
        """)
    assert config.brush.kind == "Brush" and config.brush.labels == () and not config.brush.has_labels
    assert config.brush.result_type == "brush"
    assert config.region_labels.name == "classes"
    assert config.labels == ("cat", "dog")
    assert config.keypoint.kind == "KeyPoint"


def test_plain_brush_without_any_labels():
    config = parse_label_config('<View><Image name="image" value="$image"/><Brush name="m" toName="image"/></View>')
    assert config.brush.name == "m"
    assert config.labels == ()


def test_smart_only_rectangle_is_input_not_output():
    config = parse_label_config("""
        <View>
          <Image name="image" value="$image"/>
          <RectangleLabels name="prompt_box" toName="image" smartOnly="true"><Label value="cat"/></RectangleLabels>
          <BrushLabels name="tag" toName="image"><Label value="cat"/></BrushLabels>
        </View>
        """)
    assert config.rectangle is None
    assert config.control("prompt_box").smart
    assert config.brush.name == "tag"


def test_text_prompt_textarea_skips_per_region_ones():
    config = parse_label_config("""
        <View>
          <Image name="image" value="$image"/>
          <BrushLabels name="tag" toName="image"><Label value="cat"/></BrushLabels>
          <TextArea name="note" toName="image" perRegion="true"/>
          <TextArea name="prompt" toName="image" editable="true"/>
        </View>
        """)
    assert config.text_prompt.name == "prompt" and config.text_prompt.kind == "TextArea"


def test_concept_text_uses_value_alias_and_prompt_attribute():
    xml = """
        <View>
          <Image name="image" value="$image"/>
          <BrushLabels name="tag" toName="image">
            <Label value="Car" sam3_prompt="passenger car"/>
            <Label value="Person" alias="P" hint="anyone, including cyclists"/>
            <Label value="tree"/>
          </BrushLabels>
        </View>
    """
    # Label Studio's own validation (label-studio-sdk) accepts the extra attribute.
    LabelInterface(xml).validate()
    config = parse_label_config(xml)
    # Results carry the alias when there is one, so that is the label.
    assert config.labels == ("Car", "P", "tree")
    assert config.concept_text("Car") == "passenger car"
    assert config.concept_text("P") == "Person"  # the hint is a tooltip, not a prompt
    assert config.concept_text("tree") == "tree"
    assert config.concept_text("unknown") == "unknown"


def test_several_images_first_with_output_is_used():
    config = parse_label_config("""
        <View>
          <Image name="reference" value="$ref"/>
          <Image name="photo" value="$photo"/>
          <PolygonLabels name="poly" toName="photo"><Label value="x"/></PolygonLabels>
          <Image name="third" value="$third"/>
          <BrushLabels name="b" toName="third"><Label value="y"/></BrushLabels>
        </View>
        """)
    assert config.image_name == "photo" and config.image_value == "photo"
    assert config.brush is None and config.polygon.name == "poly"
    assert [c.name for c in config.controls] == ["poly"]


def test_control_with_several_to_names_targets_our_image():
    config = parse_label_config("""
        <View>
          <Image name="a" value="$a"/>
          <BrushLabels name="b" toName="a,z"><Label value="y"/></BrushLabels>
          <Image name="z" value="$z"/>
        </View>
        """)
    assert config.brush.to_name == "a"


def test_case_of_tag_names_is_normalised():
    # The editor reads tag names case-insensitively; kinds come out canonical.
    config = parse_label_config(
        '<View><Image name="i" value="$i"/><rectanglelabels name="r" toName="i"><Label value="x"/></rectanglelabels></View>'
    )
    assert config.rectangle.kind == "RectangleLabels"


@pytest.mark.parametrize(
    "xml, fragment",
    [
        (
            '<View><Text name="t" value="$text"/><Labels name="l" toName="t"><Label value="a"/></Labels></View>',
            "<Image",
        ),
        ('<View><Image name="image" value="$image"/></View>', "BrushLabels"),
        (
            '<View><Image name="image" value="$image"/><KeyPointLabels name="kp" toName="image" smart="true">'
            '<Label value="a"/></KeyPointLabels><Choices name="c" toName="image"><Choice value="x"/></Choices></View>',
            'image "image" has no control',
        ),
        ('<View><Image name="image" value="$image"', "could not be parsed"),
        ("", "no label config"),
        (
            '<View><Image name="image" value="https://example.com/a.jpg"/>'
            '<BrushLabels name="b" toName="image"><Label value="a"/></BrushLabels></View>',
            'value="$image"',
        ),
        (
            '<View><Image name="image" valueList="$images"/>'
            '<BrushLabels name="b" toName="image"><Label value="a"/></BrushLabels></View>',
            "valueList",
        ),
    ],
)
def test_unsupported_configs_say_what_to_add(xml, fragment):
    with pytest.raises(UnsupportedConfig) as err:
        parse_label_config(xml)
    assert fragment in str(err.value)
    assert err.value.status == 400


def test_video_config_is_refused_with_a_video_message():
    xml = """
    <View>
      <Labels name="videoLabels" toName="video" allowEmpty="true">
        <Label value="Car"/><Label value="Person"/>
      </Labels>
      <Video name="video" value="$video" framerate="25.0"/>
      <VideoRectangle name="box" toName="video"/>
    </View>
    """
    with pytest.raises(UnsupportedConfig, match="video"):
        parse_label_config(xml)


def test_returns_image_project_config():
    assert isinstance(parse_label_config(RECORDED_CONFIG), ImageProjectConfig)


def test_ls_side_does_not_import_torch():
    code = (
        "import sys\n"
        "import sam3_backend.ls.label_config, sam3_backend.ls.prompts, "
        "sam3_backend.ls.results, sam3_backend.ls.geometry\n"
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
