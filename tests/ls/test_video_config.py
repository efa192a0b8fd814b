"""Video label configs: the recorded project's config, the dispatcher, clear refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sam3_backend.errors import UnsupportedConfig
from sam3_backend.ls.label_config import ImageProjectConfig
from sam3_backend.ls.video_config import (
    DEFAULT_FRAMERATE,
    VideoProjectConfig,
    is_video_config,
    parse_project_config,
    parse_video_config,
)

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "payloads-video-1.23.2.json"
VIDEO = json.loads(FIXTURE.read_text())


def test_recorded_config_of_the_real_ui():
    config = parse_video_config(VIDEO["label_config"])
    assert config.video_name == "video" and config.video_value == "video"
    assert config.framerate == 24.0
    assert config.box.name == "box" and config.box.kind == "VideoRectangle" and config.box.to_name == "video"
    assert config.labels == ("car", "person")
    assert config.region_labels.name == "videoLabels"
    assert config.concept_text("car") == "car"
    assert {c.name for c in config.controls} == {"box", "videoLabels"}
    # what /setup received is the same config
    assert VIDEO["connect"]["setup_request"]["json"]["schema"] == VIDEO["label_config"]


def test_dispatcher_sends_video_and_image_configs_to_their_parsers():
    assert isinstance(parse_project_config(VIDEO["label_config"]), VideoProjectConfig)
    image = '<View><Image name="image" value="$image"/><BrushLabels name="b" toName="image"><Label value="cat"/></BrushLabels></View>'
    assert isinstance(parse_project_config(image), ImageProjectConfig)
    assert is_video_config(VIDEO["label_config"]) and not is_video_config(image) and not is_video_config("<View")


def test_issue_example_with_framerate_alias_and_prompt():
    xml = (
        '<View><Video name="clip" value="$url" framerate="25"/>'
        '<VideoRectangle name="track" toName="clip" smart="true"/>'
        '<Labels name="l" toName="clip"><Label value="Car" alias="c" sam3_prompt="passenger car"/>'
        '<Label value="person"/></Labels></View>'
    )
    config = parse_video_config(xml)
    assert (config.video_name, config.video_value, config.framerate) == ("clip", "url", 25.0)
    assert config.labels == ("c", "person")
    assert config.concept_text("c") == "passenger car" and config.concept_text("person") == "person"


def test_framerate_defaults_like_label_studio_and_bad_ones_are_refused():
    base = '<View><Video name="v" value="$v"{}/><VideoRectangle name="b" toName="v"/></View>'
    assert parse_video_config(base.format("")).framerate == DEFAULT_FRAMERATE == 24.0
    assert parse_video_config(base.format(' frameRate="29.97"')).framerate == pytest.approx(29.97)
    for bad in ("0", "-5", "abc", "inf"):
        with pytest.raises(UnsupportedConfig, match="framerate"):
            parse_video_config(base.format(f' framerate="{bad}"'))


@pytest.mark.parametrize(
    "xml, needle",
    [
        ('<View><Video name="v" value="$v"/></View>', "VideoRectangle"),
        ('<View><Video name="v" value="$v"/><Labels name="l" toName="v"><Label value="a"/></Labels></View>', "VideoRectangle"),
        ('<View><Video name="v" value="v"/><VideoRectangle name="b" toName="v"/></View>', 'value="$video"'),
        ('<View><Image name="i" value="$i"/></View>', "no control"),
        ("<View><Video", "could not be parsed"),
    ],
)
def test_refusals_say_what_to_add(xml, needle):
    with pytest.raises(UnsupportedConfig, match=None) as err:
        parse_project_config(xml)
    assert needle in str(err.value)


def test_video_rectangle_on_another_object_is_not_enough():
    xml = '<View><Video name="v" value="$v"/><Video name="w" value="$w"/><VideoRectangle name="b" toName="w"/></View>'
    assert parse_video_config(xml).video_name == "w"


def test_config_without_labels_is_accepted_for_interactive_use():
    config = parse_video_config('<View><Video name="v" value="$v"/><VideoRectangle name="b" toName="v"/></View>')
    assert config.labels == () and config.region_labels is None
