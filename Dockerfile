# The project's image: Python 3.11 and `pip install -e .` of pyproject.toml (the pinned torch 2.14.1 /
# torchvision 0.29.1 / timm 1.0.31, xgboost-cpu, optuna, ...). It replaces the XMNet original's Dockerfile,
# which lacked xgboost, optuna and filelock. Build it with the original README's command, in the
# repository root (the build context must hold pyproject.toml and the package folders):
#   docker build -t xmnet .
# The working directory is the repository root, so the README commands run as written, e.g.
#   docker run --rm --gpus all -v "$PWD/data:/opt/xray-papers/data" -v "$PWD/output:/opt/xray-papers/output" \
#       xmnet python -u xmnet/Train.py --xmnet --cls_included --backbone_class densenet161 --dataset soybean_2_1
FROM python:3.11-slim

# libgomp1: the OpenMP runtime XGBoost's wheel links against (not in the slim image)
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/xray-papers
# dependencies first (a layer that survives source edits), then the sources and the editable install
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt
COPY common/ common/
COPY dvxray/ dvxray/
COPY charm_xray/ charm_xray/
COPY cxrlt/ cxrlt/
COPY xmnet/ xmnet/
COPY dcal/ dcal/
COPY shell/ shell/
RUN pip install --no-cache-dir --no-deps -e .
