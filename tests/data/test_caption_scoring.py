"""Judging generated captions against the scene they describe."""
from mmzoo.data.shapes_captions import caption_is_correct, sample_scene


def test_reference_captions_are_correct_and_wrong_attributes_are_not():
    for i in range(200):
        scene = sample_scene(0, "val", i)
        assert caption_is_correct(scene.caption, scene), scene.caption
    scene = sample_scene(0, "val", 0)
    o = scene.objects[0]
    from mmzoo.data.shapes_captions import COLOURS, SHAPES, SIZES

    wrong_colour = COLOURS[(o.colour + 1) % len(COLOURS)]
    assert not caption_is_correct(f"a {wrong_colour} {SHAPES[o.shape]}", scene) or any(
        COLOURS[p.colour] == wrong_colour and p.shape == o.shape for p in scene.objects)
    wrong_size = SIZES[1 - o.size]
    assert caption_is_correct(f"a {COLOURS[o.colour]} {SHAPES[o.shape]}", scene)
    assert not caption_is_correct(f"a {wrong_size} {COLOURS[o.colour]} {SHAPES[o.shape]}", scene) or any(
        p.size != o.size and p.colour == o.colour and p.shape == o.shape for p in scene.objects[1:])
    assert not caption_is_correct("a picture of a a a", scene)  # names no object
