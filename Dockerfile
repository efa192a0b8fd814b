# syntax=docker/dockerfile:1
#
# sam3-backend: the Label Studio ML backend for Meta's SAM 3, as a GPU image.
#
# A slim Python base: the torch wheels pinned in constraints.txt carry the CUDA runtime, so the host
# needs only the NVIDIA driver and the NVIDIA Container Toolkit; the same image runs on CPU. No
# weights inside (SAM 3's licence, gated hub repo): mount a hub cache at /data/hf (HF_HOME) or a
# checkpoint folder under /data/model (SAM3_MODEL=/data/model/<folder>), or let the first start
# download facebook/sam3 into the /data/hf volume with HF_TOKEN. Build from the repository root:
#
#   docker build -t sam3-backend .                          # add --build-arg EXTRAS=ray for Ray jobs
#   docker run --gpus all -p 9090:9090 -e HF_TOKEN -v sam3-hf:/data/hf -v sam3-model:/data/model sam3-backend
#   docker run --rm --gpus all -e HF_TOKEN -v sam3-hf:/data/hf sam3-backend doctor
#
# docker/docker-compose.yml runs it next to Label Studio; README.md ("Docker") documents both.

FROM python:3.11-slim

# Extras of the package to install, e.g. "ray" (project-scale jobs on a Ray cluster).
ARG EXTRAS=""

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HF_HOME=/data/hf \
    MODEL_DIR=/data/model \
    HOST=0.0.0.0 \
    PORT=9090

WORKDIR /opt/sam3-backend

# The one pinned install, as scripts/bootstrap.sh does it: every version from constraints.txt, the
# torch/torchvision pair first (its own layer: most of the image, and it changes least), then the
# package with its extras, then the same import check.
COPY constraints.txt ./
RUN python -m venv /opt/venv \
    && pip install --quiet -c constraints.txt torch torchvision
COPY pyproject.toml README.md ./
COPY sam3_backend ./sam3_backend
RUN pip install --quiet -c constraints.txt ".${EXTRAS:+[$EXTRAS]}" \
    && python -c "import torchvision.ops, transformers, label_studio_sdk, av; from transformers import Sam3Model" \
    && rm -rf sam3_backend build ./*.egg-info

# `gunicorn _wsgi:app` works here too, with the same gunicorn settings as `sam3-backend serve`.
COPY _wsgi.py gunicorn.conf.py ./

# Not root. Named volumes mounted on /data/* start out owned by this user; a bind-mounted host
# folder must be writable by uid 1000.
RUN useradd --create-home --uid 1000 --user-group sam3 \
    && mkdir -p /data/hf /data/model \
    && chown -R sam3:sam3 /data
USER 1000:1000
VOLUME ["/data/hf", "/data/model"]

EXPOSE 9090

# /health answers 503 while the model loads; the start period covers a first-start download.
HEALTHCHECK --interval=30s --timeout=10s --start-period=10m --retries=3 CMD ["sam3-backend", "healthcheck"]

# Exec form: gunicorn's master is PID 1 and gets SIGTERM itself (graceful_timeout 30 s: requests
# in flight finish; give `docker stop` more than that, e.g. compose's stop_grace_period: 40s).
# serve resolves the weights first (torch-free), then forks workers that each load the model, so
# CUDA is never initialised before the fork.
STOPSIGNAL SIGTERM
ENTRYPOINT ["sam3-backend"]
CMD ["serve"]
