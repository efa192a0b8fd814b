import contextlib

import numpy as np
import pytest
import torch

from helpers import make_image
from sam3_backend.types import Box, ConceptPrompt, GeometryPrompt, Point


def _reference_embeddings(tiny_checkpoint, pixel_values):
    """What SAM 3's tracker feeds its mask decoder, from transformers' Sam3TrackerVideoModel:
    neck features without the 0.5x level, the no-memory embedding on the 72x72 level."""
    from transformers import Sam3TrackerVideoModel

    video_tracker = Sam3TrackerVideoModel.from_pretrained(str(tiny_checkpoint)).eval()
    assert video_tracker.no_memory_embedding.abs().sum() > 0  # non-zero, so the tests can tell
    with torch.inference_mode():
        maps = video_tracker.get_image_features(pixel_values).fpn_hidden_states
        maps[-1] = maps[-1] + video_tracker.no_memory_embedding
        return [m.permute(1, 2, 0).reshape(1, -1, *size) for m, size in zip(maps, video_tracker.backbone_feature_sizes)]


def test_tracker_embeddings_equal_the_video_trackers(engine, tiny_checkpoint):
    """Our embeddings come from the cached backbone; transformers 5.24's image-only
    Sam3TrackerModel.get_image_embeddings puts the no-memory embedding on a dropped level."""
    image = make_image()
    reference = _reference_embeddings(tiny_checkpoint, engine._pixel_values([image]))
    ours = engine._tracker_embeddings(image)
    assert len(ours) == len(reference) == 3
    for a, b in zip(ours, reference):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b)


def _reference_click(loaded_model, tiny_checkpoint, image, points, labels):
    """Sam3TrackerProcessor + Sam3TrackerModel + post_process_masks on the reference embeddings:
    the mask and score transformers' own pipeline gives for these clicks (labels 1/0)."""
    from transformers import Sam3TrackerProcessor

    processor = Sam3TrackerProcessor.from_pretrained("facebook/sam3")
    inputs = processor(images=image.pixels, input_points=[[points]], input_labels=[[labels]], return_tensors="pt")
    embeddings = _reference_embeddings(tiny_checkpoint, inputs["pixel_values"])
    multimask = len(points) == 1
    with torch.inference_mode():
        out = loaded_model.tracker(image_embeddings=embeddings, input_points=inputs["input_points"],
                                   input_labels=inputs["input_labels"], multimask_output=multimask)
    masks = processor.post_process_masks(out.pred_masks, inputs["original_sizes"], binarize=False)[0][0]
    best = int(out.iou_scores[0, 0].argmax())
    return (masks[best] > 0).numpy(), float(out.iou_scores[0, 0, best].clamp(0, 1))


@contextlib.contextmanager
def _tracker_inputs(loaded_model):
    """Record the keyword inputs of every call of the real tracker (a forward pre-hook)."""
    seen = []
    handle = loaded_model.tracker.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append({k: v for k, v in kwargs.items() if v is not None}), with_kwargs=True
    )
    try:
        yield seen
    finally:
        handle.remove()


@pytest.mark.parametrize(
    "points, labels",
    [([[30.0, 20.0]], [1]), ([[30.0, 20.0], [70.0, 50.0]], [1, 0]), ([[10.0, 50.0], [30.0, 20.0], [60.0, 10.0]], [0, 1, 0])],
)
def test_click_masks_equal_transformers_pipeline(engine, loaded_model, tiny_checkpoint, points, labels):
    """segment_objects == transformers' processor + tracker pipeline: same point transform, point
    labels (a negative click is label 0), candidate choice, upsampling and score."""
    image = make_image(60, 80, seed=3)
    expected, score = _reference_click(loaded_model, tiny_checkpoint, image, points, labels)
    prompt = GeometryPrompt(points=tuple(Point(x, y, positive=bool(lab)) for (x, y), lab in zip(points, labels)))
    with _tracker_inputs(loaded_model) as seen:
        [inst] = engine.segment_objects(image, [prompt])
    agreement = (inst.mask == expected).mean()
    assert agreement > 0.99, agreement
    assert inst.score == pytest.approx(score, abs=1e-4)
    # The random tiny model barely reacts to a click's sign, so the mask alone cannot show an
    # inverted sign: check the labels that reach the real tracker.
    assert seen[0]["input_labels"][0, 0].tolist() == labels


def test_second_click_skips_the_vision_encoder(engine):
    image = make_image()
    engine.segment_objects(image, [GeometryPrompt(points=(Point(10, 10),))])
    assert engine.stats.vision_encoder_calls == 1
    engine.segment_objects(image, [GeometryPrompt(points=(Point(10, 10), Point(40, 30, positive=False)))])
    engine.segment_objects(image, [GeometryPrompt(box=Box(5, 5, 30, 30))])
    assert engine.stats.vision_encoder_calls == 1
    assert "vision_encoder" not in engine.last_timing.stages
    # text prompts on the same image reuse the same backbone output too
    engine.segment_concepts([image], [ConceptPrompt("cat")], threshold=0.0)
    assert engine.stats.vision_encoder_calls == 1
    engine.segment_objects(make_image(seed=9), [GeometryPrompt(points=(Point(10, 10),))])
    assert engine.stats.vision_encoder_calls == 2


def test_feature_cache_is_bounded_in_bytes(loaded_model):
    from sam3_backend.engine.image import Sam3ImageEngine

    engine = Sam3ImageEngine(loaded_model, feature_cache_bytes=200_000)
    for seed in range(6):
        engine.segment_objects(make_image(seed=seed), [GeometryPrompt(points=(Point(5, 5),))])
    stats = engine.features.stats()
    assert stats.bytes <= 200_000
    assert stats.evictions > 0


def test_objects_come_back_in_order_with_image_sized_masks(engine):
    image = make_image(50, 70)
    objects = [
        GeometryPrompt(points=(Point(10, 10), Point(20, 20, positive=False)), box=Box(2, 2, 40, 40)),
        GeometryPrompt(points=(Point(60, 45),)),
        GeometryPrompt(box=Box(30, 10, 69, 49)),
    ]
    out = engine.segment_objects(image, objects)
    assert [i.prompt_index for i in out] == [0, 1, 2]
    for inst in out:
        assert inst.mask.shape == (50, 70) and inst.mask.dtype == bool
        assert 0.0 <= inst.score <= 1.0
        if inst.mask.any():
            ys, xs = np.nonzero(inst.mask)
            assert inst.box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


def test_concepts_batched_equal_one_by_one(engine):
    """Batching images × concepts must not change any image's answer."""
    images = [make_image(48, 64, seed=1), make_image(90, 60, seed=2), make_image(40, 40, seed=3)]
    concepts = [ConceptPrompt("cat"), ConceptPrompt("dog"), ConceptPrompt(None, (Box(2, 2, 20, 20),))]
    batched = engine.segment_concepts(images, concepts, threshold=0.2, batch_size=3)
    for image, got in zip(images, batched):
        for ci, concept in enumerate(concepts):
            alone = engine.segment_concepts([image], [concept], threshold=0.2, batch_size=1)[0]
            mine = [i for i in got if i.prompt_index == ci]
            assert len(mine) == len(alone)
            for a, b in zip(mine, alone):
                assert a.score == pytest.approx(b.score, abs=1e-4)
                assert (a.mask == b.mask).mean() > 0.99


def test_concept_scores_match_transformers_postprocessing(engine, loaded_model):
    from transformers import Sam3Processor

    image = make_image(60, 80, seed=5)
    processor = Sam3Processor.from_pretrained("facebook/sam3")
    inputs = processor(images=image.pixels, text="cat", return_tensors="pt")
    with torch.inference_mode():
        out = loaded_model.detector(**inputs)
    ref = processor.post_process_instance_segmentation(out, threshold=0.1, mask_threshold=0.5,
                                                       target_sizes=[(60, 80)])[0]
    ours = engine.segment_concepts([image], [ConceptPrompt("cat")], threshold=0.1, max_instances=1000)[0]
    ref_scores = sorted(ref["scores"].tolist(), reverse=True)
    ours_scores = sorted([i.score for i in ours], reverse=True)
    # instances whose upsampled mask is empty are dropped by us (nothing to draw)
    nonempty = sorted([float(s) for s, m in zip(ref["scores"], ref["masks"]) if m.any()], reverse=True)
    assert ours_scores == pytest.approx(nonempty, abs=1e-4)
    assert len(ref_scores) >= len(ours_scores)


def test_threshold_and_max_instances(engine):
    image = make_image()
    every = engine.segment_concepts([image], [ConceptPrompt("cat")], threshold=0.0, max_instances=1000)[0]
    scores = sorted({round(i.score, 6) for i in every})
    assert len(scores) >= 4, "the tiny model should give several distinct scores"
    cut = (scores[len(scores) // 2 - 1] + scores[len(scores) // 2]) / 2  # between two real scores
    above = engine.segment_concepts([image], [ConceptPrompt("cat")], threshold=cut, max_instances=1000)[0]
    assert above and len(above) == sum(i.score > cut for i in every) < len(every)
    assert all(i.score > cut for i in above)
    few = engine.segment_concepts([image], [ConceptPrompt("cat")], threshold=0.0, max_instances=2)[0]
    assert len(few) == 2
    assert [i.score for i in few] == sorted([i.score for i in every], reverse=True)[:2]


def test_empty_inputs(engine):
    assert engine.segment_objects(make_image(), []) == []
    assert engine.segment_concepts([], [ConceptPrompt("cat")]) == []
    assert engine.segment_concepts([make_image()], []) == [[]]


@pytest.mark.parametrize("h, w", [(1, 1), (1, 300), (300, 2), (3, 3), (7, 5)])
def test_degenerate_image_shapes_are_read_as_hwc(engine, loaded_model, h, w):
    """Images 1-3 px high used to be misread as channels-first by the image processor."""
    image = make_image(h, w, seed=h * 1000 + w)
    pixel_values = engine._pixel_values([image])
    size = loaded_model.image_size
    assert tuple(pixel_values.shape) == (1, 3, size, size)
    # a uniform-colour image must come out uniform in every channel (no channel/height mix-up)
    flat = make_image(h, w)
    flat.pixels[...] = (200, 10, 90)
    values = engine._pixel_values([flat])[0]
    for channel in range(3):
        assert torch.allclose(values[channel], values[channel, 0, 0].expand_as(values[channel]), atol=1e-5)
    assert not torch.allclose(values[0, 0, 0], values[1, 0, 0])
    [inst] = engine.segment_objects(image, [GeometryPrompt(box=Box(0, 0, w, h))])
    assert inst.mask.shape == (h, w)


def test_bfloat16_runs_every_path(tiny_checkpoint):
    """The CUDA default dtype, exercised on CPU so CI catches dtype mismatches in our code."""
    from sam3_backend.engine.image import Sam3ImageEngine
    from sam3_backend.engine.loading import ModelSource, load_sam3

    model = load_sam3(ModelSource(str(tiny_checkpoint)), device="cpu", dtype="bfloat16")
    assert model.dtype == torch.bfloat16
    assert next(model.detector.parameters()).dtype == torch.bfloat16
    engine = Sam3ImageEngine(model)
    image = make_image(50, 70)
    objects = engine.segment_objects(image, [GeometryPrompt(points=(Point(10, 10), Point(60, 40, False)), box=Box(2, 2, 40, 40))])
    assert objects[0].mask.shape == (50, 70) and 0.0 <= objects[0].score <= 1.0
    found = engine.segment_concepts([image], [ConceptPrompt("cat"), ConceptPrompt("dog", (Box(1, 1, 30, 30),))],
                                    threshold=0.0)
    assert found[0] and all(i.mask.dtype == bool for i in found[0])


def test_mask_box_is_the_tight_pixel_box():
    from sam3_backend.engine.image import _mask_box

    rng = np.random.default_rng(0)
    for _ in range(50):
        h, w = rng.integers(1, 40, size=2)
        mask = rng.random((h, w)) < rng.random() * 0.05
        ys, xs = np.nonzero(mask)
        expected = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) if len(xs) else (0, 0, 0, 0)
        assert _mask_box(mask) == tuple(float(v) for v in expected)
    assert _mask_box(np.asfortranarray(np.eye(5, dtype=bool))) == (0.0, 0.0, 5.0, 5.0)
