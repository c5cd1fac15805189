# avatarcast server image.
#   CPU (default):  docker build -t avatarcast .
#   NVIDIA GPU:     docker build --target gpu -t avatarcast:gpu .   (run with --gpus all)
# Both run `avatarcast serve` on port 8080 with the built-in default avatar; nothing is
# downloaded at run time.

FROM python:3.11-slim-bookworm AS cpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 AVATARCAST_HOME=/data/avatars
RUN apt-get update \
 && apt-get install -y --no-install-recommends espeak-ng srt-tools \
    festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY streamer ./streamer
COPY models ./models
COPY web ./web
RUN pip install --no-cache-dir .
RUN useradd --create-home avatarcast && mkdir -p /data/avatars && chown -R avatarcast /data
USER avatarcast
EXPOSE 8080
# Listening on all interfaces inside a container: set AVATARCAST_API_KEY when the port is published.
CMD ["avatarcast", "serve", "--host", "0.0.0.0", "--port", "8080"]

# The GPU image: CUDA + cuDNN runtime with ONNX Runtime's CUDA and TensorRT execution providers
# and the TensorRT Python package for `avatarcast export NAME --to tensorrt`.
FROM nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04 AS gpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 AVATARCAST_HOME=/data/avatars \
    PIP_BREAK_SYSTEM_PACKAGES=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-pip python3-venv espeak-ng srt-tools \
    festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY streamer ./streamer
COPY models ./models
COPY web ./web
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir '.[gpu]' tensorrt \
 && /opt/venv/bin/pip uninstall -y onnxruntime || true
ENV PATH=/opt/venv/bin:$PATH
EXPOSE 8080
CMD ["avatarcast", "serve", "--host", "0.0.0.0", "--port", "8080", "--backend", "auto"]

# The default build target is the CPU image.
FROM cpu
