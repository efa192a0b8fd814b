"""A loopback server imitating Label Studio's media endpoints, and an app wired to it."""

from __future__ import annotations

import pytest

from helpers import TOKEN, FakeLabelStudio, png

@pytest.fixture(scope="session")
def fake_ls():
    ls = FakeLabelStudio()
    ls.files["/data/upload/1/8db9e49a-img0.png"] = png(48, 64, 0)
    ls.files["/data/upload/1/9fa52609-img1.jpg"] = png(48, 64, 1)
    ls.files["/data/upload/1/b04a6451-img2.png"] = png(60, 40, 2)
    ls.files["/data/upload/1/98c745a9-ui.png"] = png(48, 64, 3)
    ls.files["/data/upload/1/1d87d0c8-ui.png"] = png(48, 64, 4)
    ls.files["/data/upload/1/not-an-image.png"] = b"<html>login</html>"
    yield ls
    ls.close()


@pytest.fixture
def make_app(loaded_model, fake_ls, tmp_path):
    from sam3_backend.app import create_app
    from sam3_backend.config import Settings
    from sam3_backend.engine.image import Sam3ImageEngine

    def build(**overrides):
        values = dict(label_studio_url=fake_ls.url, label_studio_api_key=TOKEN, model_dir=tmp_path / "model",
                      score_threshold=0.0)
        values.update(overrides)
        settings = Settings.from_env({}, **values)
        engine = Sam3ImageEngine(loaded_model, feature_cache_bytes=64 << 20)
        return create_app(settings, engine=engine)

    return build


@pytest.fixture
def client(make_app):
    return make_app().test_client()
