"""Per-epoch curves: memorisation counts, validation-retrieval probe, best-epoch bookkeeping."""
import math

import numpy as np
import pytest
import tensorflow as tf

import run_history
from evaluation import epoch_probe
from evaluation.memorisation import (FitCounts, PriorTally, batch_counts, multilabel_counts,
                                     pixel_counts, relation_counts)


# ---------------------------------------------------------------- memorisation
def test_multilabel_counts_on_hand_made_predictions():
    label = [[1, 0, 1], [0, 1, 0]]
    noisy = [[1, 1, 0], [0, 1, 0]]          # pairs (0, 1) added, (0, 2) removed by the noise
    logits = [[2.0, 1.0, 3.0], [-1.0, -2.0, -1.0]]  # predicted: all of row 0, none of row 1
    c = multilabel_counts(logits, label, noisy)
    # corrupted: (0,1) predicted 1 = noisy (fitted), (0,2) predicted 1 != noisy 0
    # clean: (0,0) 1 ok, (1,0) 0 ok, (1,1) predicted 0 != 1, (1,2) 0 ok
    assert (c.corrupted, c.corrupted_fitted, c.clean, c.clean_fitted) == (2, 1, 4, 3)
    assert c.shares() == {"corrupted_fitted": 0.5, "clean_fitted": 0.75}


def test_pixel_counts_skip_unlabelled_pixels():
    clean = np.array([[[0, 1, -1, 2, 1]]])
    noisy = np.array([[[0, 2, -1, 1, 1]]])  # pixels 1 and 3 corrupted, 2 unlabelled
    pred = np.array([[[0, 2, 0, 2, 0]]])
    logits = np.eye(3)[pred] * 5.0          # (1, 1, 5, 3) with arg-max = pred
    c = pixel_counts(logits, clean, noisy)
    # corrupted: pixel 1 predicted 2 = noisy, pixel 3 predicted 2 != 1; clean: 0 ok, 4 wrong
    assert (c.corrupted, c.corrupted_fitted, c.clean, c.clean_fitted) == (2, 1, 2, 1)


def test_relation_counts_nearer_the_noisy_target():
    clean = [[0.0, 0.5, 0.2]]
    noisy = [[0.0, 0.1, 0.6]]
    pred = [[0.3, 0.2, 0.3]]  # entry 1 nearer noisy (0.1 against 0.3), entry 2 nearer clean
    c = relation_counts(pred, clean, noisy)
    assert (c.corrupted, c.corrupted_fitted, c.clean) == (2, 1, 1)
    shares = c.shares()
    assert shares["corrupted_fitted"] == 0.5 and math.isnan(shares["clean_fitted"])


def test_counts_pool_over_batches_and_nothing_corrupted_is_nan():
    total = FitCounts(2, 1, 4, 3) + FitCounts(2, 2, 0, 0)
    assert total.shares() == {"corrupted_fitted": 0.75, "clean_fitted": 0.75}
    assert math.isnan(FitCounts(0, 0, 4, 4).shares()["corrupted_fitted"])


def test_prior_only_reference_multilabel_by_hand():
    # class 0 is present in 2 of 3 noisy labels (majority present), classes 1, 2 absent
    label = np.array([[1, 0, 1], [1, 0, 0], [0, 0, 1]])
    noisy = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 1]])
    tally = PriorTally("BCE", 3)
    tally.add({"label": label[:2], "noisy_label": noisy[:2]})  # pooled over two batches
    tally.add({"label": label[2:], "noisy_label": noisy[2:]})
    # prior predicts (1, 0, 0). Corrupted: (0,1) noisy 1 -> not fitted; (0,2) noisy 0 -> fitted.
    # Clean: class 0 values 1, 1, 0 -> 2 fitted; class 1 0, 0 -> 2; class 2 0, 1 -> 1: 5 of 7
    assert tally.shares() == {"corrupted_fitted_prior": 0.5, "clean_fitted_prior": 5 / 7}
    # the same as scoring the prior's prediction with multilabel_counts
    logits = np.tile([[1.0, -1.0, -1.0]], (3, 1))
    c = multilabel_counts(logits, label, noisy).shares()
    assert (c["corrupted_fitted"], c["clean_fitted"]) == (0.5, 5 / 7)


def test_prior_only_reference_pixels_by_hand():
    clean = np.array([[[0, 1, -1, 2, 1, 1]]])
    noisy = np.array([[[0, 2, -1, 1, 1, 1]]])  # noisy classes: 0 once, 1 three times, 2 once
    tally = PriorTally("PCE", 3)
    tally.add({"seg_map": clean, "noisy_seg_map": noisy})
    # prior predicts class 1 everywhere. Corrupted pixels 1 (noisy 2), 3 (noisy 1): 1 of 2.
    # Clean labelled pixels 0 (class 0), 4, 5 (class 1): 2 of 3
    assert tally.shares() == {"corrupted_fitted_prior": 0.5, "clean_fitted_prior": 2 / 3}
    assert math.isnan(PriorTally("RRL", 3).shares()["corrupted_fitted_prior"])


def test_batch_counts_for_relation_heads_read_both_maps():
    from losses.relations import relation_targets_tf
    clean = tf.constant([[[0, 0], [1, 1]]])
    noisy = tf.constant([[[0, 0], [2, 2]]])
    batch = {"seg_map": clean, "noisy_seg_map": noisy}
    fitted = batch_counts("RRL", relation_targets_tf(noisy, 3).numpy(), batch, 3)
    assert fitted.corrupted > 0 and fitted.corrupted_fitted == fitted.corrupted
    honest = batch_counts("RRL", relation_targets_tf(clean, 3).numpy(), batch, 3)
    assert honest.corrupted == fitted.corrupted and honest.corrupted_fitted == 0
    with pytest.raises(ValueError, match="unknown task 'X'"):
        batch_counts("X", None, batch, 3)


# ---------------------------------------------------------------- probe pieces
def test_subset_indices_fixed_sorted_and_all_when_not_bounded():
    a = epoch_probe.subset_indices(100, 10)
    assert a.shape == (10,) and np.all(np.diff(a) > 0) and a.max() < 100
    np.testing.assert_array_equal(a, epoch_probe.subset_indices(100, 10))
    assert epoch_probe.subset_indices(100, 0) is None
    assert epoch_probe.subset_indices(100, 100) is None


def test_probe_epochs():
    assert [e for e in range(1, 8) if epoch_probe.is_due(e, 3, 7)] == [3, 6, 7]
    assert [e for e in range(1, 4) if epoch_probe.is_due(e, 1, 3)] == [1, 2, 3]
    assert not any(epoch_probe.is_due(e, 0, 3) for e in range(1, 4))


def test_score_retrieval_is_the_headline_metric_of_the_clean_labels():
    # 2 queries, 4 archive items; chi2 ranks the identical feature first
    a_feat = np.array([[1, 0], [0, 1], [1, 1], [0.5, 0]], np.float32)
    a_lab = np.array([[1, 0], [0, 1], [1, 1], [0, 0]], np.float32)
    q_feat = a_feat[:2].copy()
    q_lab = a_lab[:2].copy()
    name, value = epoch_probe.score_retrieval(q_feat, q_lab, a_feat, a_lab, "chi2", "DLRSD")
    assert name == "NDCG@4"  # an archive of 4 (< 20): NDCG at its size
    # query 0 (1, 0): chi2 0, 1, 0.5, 1/12 -> ranks items 0, 3, 2, 1 with s = 1, 0, 1, 0:
    # DCG 1 + 1/log2(4) = 1.5, ideal (same items re-sorted) 1 + 1/log2(3) -> 0.91972;
    # query 1 (0, 1): chi2 1, 0, 0.5, 0.75 -> items 1, 2, 3, 0, s = 1, 1, 0, 0 -> 1
    assert value == pytest.approx((1.5 / (1 + 1 / np.log2(3)) + 1.0) / 2, abs=1e-6)
    # a perfectly ordered archive scores 1
    _, one = epoch_probe.score_retrieval(a_feat[:3], a_lab[:3], a_feat[:3], a_lab[:3], "chi2",
                                         "DLRSD")
    assert one == pytest.approx(1.0)


# ---------------------------------------------------------------- history and best epoch
def test_best_epoch_is_the_highest_validation_value_earliest_on_ties():
    s = run_history.empty_state()
    s, best = run_history.record(s, {"epoch": 1, "val_retrieval": 0.4})
    assert best and s["best_epoch"] == 1
    s, best = run_history.record(s, {"epoch": 2, "val_retrieval": 0.6})
    assert best and s["best_epoch"] == 2
    s, best = run_history.record(s, {"epoch": 3, "val_retrieval": 0.6})  # a tie keeps 2
    assert not best and s["best_epoch"] == 2
    s, best = run_history.record(s, {"epoch": 4, "val_retrieval": float("nan")})
    assert not best and s["best_epoch"] == 2
    assert [h["epoch"] for h in s["history"]] == [1, 2, 3, 4]
    assert run_history.selected_epoch(s, "best_val", 4) == 2
    assert run_history.selected_epoch(s, "last", 4) == 4
    # the checkpointed JSON round trip (NaN included) keeps it all
    back = run_history.load_state(run_history.dump_state(s))
    assert back["best_epoch"] == 2 and back["best_value"] == 0.6 and len(back["history"]) == 4
    # an epoch validated again after a resume replaces its entry
    s, best = run_history.record(s, {"epoch": 4, "val_retrieval": 0.7})
    assert best and s["best_epoch"] == 4 and len(s["history"]) == 4
    with pytest.raises(ValueError, match="no epoch has a finite"):
        run_history.selected_epoch(run_history.empty_state(), "best_val", 3)


def test_make_dataset_indices_keep_those_records(records):
    from archives.pipeline import make_dataset
    ds = make_dataset([str(records / "train.tfrecord")], "DLRSD", training=False, batch_size=3,
                      indices=np.array([1, 4, 6]))
    got = np.concatenate([b["sample_index"].numpy() for b in ds])
    np.testing.assert_array_equal(got, [1, 4, 6])
    with pytest.raises(ValueError, match="indices select evaluation records"):
        make_dataset([str(records / "train.tfrecord")], "DLRSD", training=True, batch_size=3,
                     indices=[1])


@pytest.mark.parametrize("model_name", ["GRID-BCE", "PCE"])
def test_probe_measures_the_model_on_the_training_and_validation_records(records, tmp_path,
                                                                          model_name):
    from conftest import run_config
    import models
    from archives.pipeline import make_dataset
    from evaluation.memorisation import batch_counts

    cfg = run_config(records, tmp_path, model_name=model_name, val_retrieval_archive=6)
    model = models.build_model(cfg)
    probe = epoch_probe.EpochProbe(cfg)
    archive_idx, query_idx = probe.subsets
    assert archive_idx.size == 6 and query_idx is None  # 4 queries: all of them
    got = probe.measure(epoch_probe.make_probe_fn(model, cfg))
    # the same numbers, computed here from the model's forward pass on the same 6 records
    ds = make_dataset(list(cfg.noisy_train_paths), cfg.archive, training=False, batch_size=8,
                      indices=archive_idx)
    batch = next(iter(ds))
    out = model.forward(batch["image"])
    counts = batch_counts(cfg.task, out["dis"].numpy(), batch, cfg.nb_class)
    assert counts.corrupted > 0
    assert got["corrupted_fitted"] == pytest.approx(counts.shares()["corrupted_fitted"])
    assert got["clean_fitted"] == pytest.approx(counts.shares()["clean_fitted"])
    prior = PriorTally(cfg.task, cfg.nb_class)
    prior.add({k: v.numpy() for k, v in batch.items()})
    assert got["corrupted_fitted_prior"] == pytest.approx(prior.shares()["corrupted_fitted_prior"])
    assert 0 <= got["clean_fitted_prior"] <= 1
    feat = model.feature_model(batch["image"]).numpy()
    val = next(iter(make_dataset(list(cfg.val_tfrecord_paths), cfg.archive, training=False,
                                 batch_size=8)))
    name, value = epoch_probe.score_retrieval(model.feature_model(val["image"]).numpy(),
                                              val["label"], feat, batch["label"], "chi2",
                                              "DLRSD")
    assert got["retrieval_metric"] == name == "NDCG@6"
    assert got["val_retrieval"] == pytest.approx(value)


def _train(cfg, **kw):
    import training
    return training.train(cfg, show_progress=False, log=lambda m: None, **kw)


def test_training_logs_history_and_exports_the_best_validation_epoch_across_resume(
        records, tmp_path, monkeypatch):
    import hashlib
    import json

    values = {1: 0.9, 2: 0.5, 3: 0.7}  # validation retrieval per epoch: epoch 1 is the best
    calls = []

    def fake_measure(self, fn):
        epoch = len(calls) + 1
        calls.append(epoch)
        return {"retrieval_metric": "NDCG@4", "val_retrieval": values[epoch],
                "corrupted_fitted": 0.1 * epoch, "clean_fitted": 0.5}

    monkeypatch.setattr(epoch_probe.EpochProbe, "measure", fake_measure)
    from conftest import run_config
    cfg = run_config(records, tmp_path, nb_epoch=3, select="best_val")
    best = cfg.weights_dir / run_history.BEST_FILE
    _train(cfg, max_epochs=1)  # "interrupted" after epoch 1
    digest = hashlib.sha256(best.read_bytes()).hexdigest()
    assert not cfg.feature_model_path.exists()
    _train(cfg, resume=True)
    assert calls == [1, 2, 3]
    assert hashlib.sha256(best.read_bytes()).hexdigest() == digest  # never beaten: not rewritten
    assert cfg.feature_model_path.read_bytes() == best.read_bytes()
    dump = json.loads(cfg.config_dump_path.read_text())
    assert dump["selected_epoch"] == 1 and dump["select"] == "best_val"
    assert [h["epoch"] for h in dump["history"]] == [1, 2, 3]
    assert [h["val_retrieval"] for h in dump["history"]] == [0.9, 0.5, 0.7]
    assert dump["history"][2]["corrupted_fitted"] == pytest.approx(0.3)
    assert "loss" in dump["history"][0] and "val_loss" in dump["history"][0]
    assert "sel_precision" in dump["history"][0]


def test_training_with_select_last_exports_the_last_epoch_and_logs_the_probe(records, tmp_path):
    import json

    from conftest import run_config
    cfg = run_config(records, tmp_path, nb_epoch=2, model_name="BCE")
    lines = []
    import training
    training.train(cfg, show_progress=False, log=lines.append)
    dump = json.loads(cfg.config_dump_path.read_text())
    assert dump["selected_epoch"] == 2 and len(dump["history"]) == 2
    for h in dump["history"]:
        assert h["retrieval_metric"] == "NDCG@8" and 0.0 <= h["val_retrieval"] <= 1.0
        assert 0.0 <= h["corrupted_fitted"] <= 1.0 and 0.0 <= h["clean_fitted"] <= 1.0
    assert any(", val NDCG@8 " in m and "fitted corrupted" in m for m in lines)
    # the TensorBoard scalars of the probe
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(cfg.summaries_dir), size_guidance={"tensors": 0})
    acc.Reload()
    tags = set(acc.Tags()["tensors"])
    assert {"val/retrieval_NDCG@8", "memorisation/corrupted_fitted",
            "memorisation/clean_fitted"} <= tags
    assert len(acc.Tensors("val/retrieval_NDCG@8")) == 2


def test_a_dump_with_an_undefined_value_is_strict_json_and_round_trips(records, tmp_path):
    """At noise 0 nothing is corrupted: corrupted_fitted is undefined (NaN). The dumped config
    holds null there (strict JSON: jq and JavaScript read it), read_dump gives NaN back, and a
    resumed complete run writes the same history and final metrics again."""
    import json

    from atomic_files import write_json_atomic
    from config import read_dump
    from conftest import run_config

    def strict(text):
        def refuse(name):
            raise ValueError(f"not strict JSON: {name}")
        return json.loads(text, parse_constant=refuse)

    cfg = run_config(records, tmp_path, noise_prcnt=0, nb_epoch=1)
    _train(cfg)
    text = cfg.config_dump_path.read_text()
    raw = strict(text)
    (entry,) = raw["history"]
    assert entry["corrupted_fitted"] is None and 0.0 <= entry["clean_fitted"] <= 1.0
    assert entry["retrieval_metric"] == "NDCG@8"
    back = read_dump(cfg.config_dump_path)
    assert math.isnan(back["history"][0]["corrupted_fitted"])
    assert back["history"][0]["clean_fitted"] == entry["clean_fitted"]
    again = tmp_path / "again.json"
    write_json_atomic(again, back)
    assert again.read_text() == text
    _train(cfg, resume=True)  # complete: re-saves its outputs from the checkpoint and the dump
    resaved = strict(cfg.config_dump_path.read_text())
    assert resaved["history"] == raw["history"] and resaved["final_metrics"] == raw["final_metrics"]


def test_grid_pce_kl_reduction_scales_by_rows_over_latent_dims():
    import models
    from models.config import ModelConfig

    def kl(reduction):
        cfg = ModelConfig(model_name="GRID-PCE", nb_class=3, input_shape=(32, 32, 3),
                          backbone="small_cnn", embed_dim=6, kl_reduction=reduction)
        import keras
        keras.utils.set_random_seed(0)  # the same weights for both reductions
        model = models.build_model(cfg)
        batch = {"image": tf.random.stateless_normal((2, 32, 32, 3), [1, 2]),
                 "noisy_seg_map": tf.zeros((2, 32, 32), tf.int32)}
        return model.per_sample_losses(batch)["kl"].numpy(), model.z_shape

    ours, z_shape = kl("latent")
    published, _ = kl("published")
    h, _, e = z_shape
    assert h != e and np.all(ours > 0)
    np.testing.assert_allclose(ours, published * e / h, rtol=1e-5)


def test_milan_probe_ranks_hash_codes_and_measures_no_memorisation(records, tmp_path):
    from conftest import run_config
    cfg = run_config(records, tmp_path, model_name="MiLaN", batch_size=6, nb_epoch=1,
                     hash_bits=16)
    _train(cfg)
    from config import read_dump
    (entry,) = read_dump(cfg.config_dump_path)["history"]  # null in the file: read back as NaN
    assert entry["retrieval_metric"] == "NDCG@8" and 0.0 <= entry["val_retrieval"] <= 1.0
    assert math.isnan(entry["corrupted_fitted"]) and math.isnan(entry["clean_fitted"])
    assert epoch_probe.distance_of("MiLaN") == "hamming"
    assert epoch_probe.memorisation_task(cfg) is None


def test_a_feature_the_distance_cannot_rank_is_noted_once_not_fatal(records, tmp_path):
    from conftest import run_config
    cfg = run_config(records, tmp_path, model_name="BCE")
    notes = []
    probe = epoch_probe.EpochProbe(cfg, notes.append)
    negative = lambda images: (-tf.ones((tf.shape(images)[0], 3)),)  # noqa: E731
    for _ in range(2):
        got = probe.measure(negative)
        assert math.isnan(got["val_retrieval"]) and "retrieval_metric" not in got
        assert math.isnan(got["corrupted_fitted"])  # no discriminative output: not measured
    assert len(notes) == 1 and "negative values" in notes[0]
