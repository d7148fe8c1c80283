#!/usr/bin/env bash
# Reproduce every shipped model from the datasets (CPU; the grains recipe alone takes about 55
# minutes on 2 cores, neu_segment's about 70 on 2 cores, see docs/models/neu_segment.md):
#   bash models/training/train_all.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
pip install -q -r models/training/requirements.txt
# the recipes that choose settings with the Rust evaluator (grains) need the binary first
cargo build --release
python3 models/training/neu_classify.py
python3 models/training/add_class.py --name red_iron --folder ../shared/datasets/x_sdd/red_iron --out-stem neu7_classify --epochs 30
python3 models/training/reference.py models/neu_classify.toml models/neu7_classify.toml
python3 models/training/kolektor_segment.py
python3 models/training/grains_316l.py
python3 models/training/kolektor_anomaly.py
python3 models/training/kolektor_crack_filter.py   # the anomaly tool's hand-drawn option
python3 models/training/neu_segment.py
python3 models/training/stamp_metrics.py models/neu_classify.toml models/neu7_classify.toml models/kolektor_segment.toml models/kolektor_anomaly.toml \
    models/kolektor_crack_filter.toml models/grains_316l.toml \
    --changed "retrained by models/training/train_all.sh"
