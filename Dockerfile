# cl_iad container. CPU by default; build a CUDA image with --build-arg CUDA=cu128 (any tag the
# PyTorch wheel index serves for the torch version in requirements/lock.txt). Every package is
# installed at its locked version, as `make test` and CI install them.
#   docker build -t cl_iad .                          # CPU
#   docker build -t cl_iad:cuda --build-arg CUDA=cu128 .
#   docker run --rm -v /data:/data -v $PWD/results:/opt/cl_iad/results cl_iad run --dataset synthetic
FROM python:3.11-slim

ARG CUDA=cpu
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 MPLBACKEND=Agg WANDB_MODE=offline

RUN apt-get update && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/cl_iad
COPY pyproject.toml README.md ./
COPY requirements ./requirements
COPY cl_iad ./cl_iad
COPY experiments ./experiments

# torch first, from the wheel index of the chosen variant, so the package install keeps it
RUN pip install --index-url "https://download.pytorch.org/whl/${CUDA}" --extra-index-url https://pypi.org/simple \
        -c requirements/lock.txt torch torchvision \
    && pip install -c requirements/lock.txt ".[ray]"

ENTRYPOINT ["cl-iad"]
CMD ["--help"]
