"""One light description per archive: the facts config, pipeline, models, evaluation, plots,
retrieval, demo and the sample writer read. Imports nothing heavy (no TensorFlow, no rasterio),
so ``config.py`` and ``retrieval.py`` can use it at start-up.

Adding an archive = one :class:`ArchiveInfo` entry (``register`` it, or add it to ``ARCHIVES``)
plus its module (``info.module``: ``parse_records``, ``prepare``) and its tests. Rules read
fields (``has_pixel_maps``, ``scene_classes``), never the archive's name. An archive with several
input channel sets (BigEarthNet v2: S2, S1, S1+S2) lists them as :class:`BandSet` entries;
``info.with_bands(name)`` is the description for one of them, and the pipeline, plots and
evaluation accept such a description wherever they take a dataset name.
"""
from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass

from bigearthnet_common import constants as _ben_constants  # plain lists; no TF, no GDAL


def relation_size(nb_class: int) -> int:
    """Size of the RRL target: the upper triangle of a C x C matrix, diagonal included."""
    return nb_class * (nb_class + 1) // 2


@dataclass(frozen=True)
class BandSet:
    """An alternative set of input channels of an archive (e.g. S1, S2 or both)."""

    name: str
    channel_names: tuple[str, ...]
    model_mean: tuple[float, ...]
    model_std: tuple[float, ...]
    parse_kwargs: tuple[tuple[str, object], ...] = ()  # extra arguments of parse_records


@dataclass(frozen=True)
class ArchiveInfo:
    """What training, evaluation and the tools need to know about one archive."""

    name: str                          # the config's "dataset" value
    module: str                        # parses its records (parse_records) and prepares raw data
    class_names: tuple[str, ...]       # class-id order of labels and maps
    image_shape: tuple[int, int, int]  # as parsed from the records (H, W, C)
    model_input_shape: tuple[int, int, int]
    channel_names: tuple[str, ...]     # the C channels of ``image``
    model_mean: tuple[float, ...]      # per channel, subtracted before the model
    model_std: tuple[float, ...]
    noise_levels: tuple[int, ...]      # noise_prcnt values prep offers (besides 0)
    has_pixel_maps: bool               # seg_map / noisy_seg_map in the records (PCE, RRL)
    shuffle_buffer: int
    default_topk: int                  # retrieval K when none is given
    headline_metric: str               # the metric the published tables report
    rgb_channels: tuple[int, int, int]  # channels of ``image`` shown as R, G, B
    rgb_max: float | None = None       # fixed display range 0..rgb_max; None: 2-98% stretch
    train_crop: int | None = None      # random crop (training) / centre crop (evaluation)
    scene_classes: tuple[str, ...] = ()  # scene class = patch name without trailing digits
    sample_module: str | None = None   # writes a synthetic sample archive (write_sample_archive)
    demo_configs: tuple[str, ...] = ()  # `make demo DATASET=<name>`: configs trained in turn
    demo_sample_args: tuple[str, ...] = ()  # extra archives.sample options for the demo
    demo_folder: str = ""              # its folder under dumps/demo/{raw,data} (default: name)
    # prep command of the demo; "{raw}" / "{out}" stand for the sample and output folders
    demo_prep: tuple[str, ...] = ()
    # extra keyword arguments of the module's parse_records, as (name, value) pairs
    parse_kwargs: tuple[tuple[str, object], ...] = ()
    band_sets: tuple[BandSet, ...] = ()  # alternatives to the channels above (with_bands)
    band_set: str = "default"          # which one this description holds
    # extra parse_records arguments for models that use pixel maps (PCE, RRL): e.g. BENv2's
    # map noise rule instead of its pair rule (for_pixel_maps)
    map_parse_kwargs: tuple[tuple[str, object], ...] = ()

    @property
    def nb_class(self) -> int:
        return len(self.class_names)

    @property
    def out_size(self) -> int:
        return relation_size(self.nb_class)

    def load(self):
        """The archive's module (imported on first use; it may import TensorFlow)."""
        return importlib.import_module(self.module)

    def with_bands(self, name: str) -> "ArchiveInfo":
        """This description for band set ``name`` ("default": itself): channels, statistics,
        shapes and parse arguments of that set; ValueError naming the offered sets."""
        if name == self.band_set:
            return self
        for bs in self.band_sets:
            if bs.name == name:
                c = len(bs.channel_names)
                return dataclasses.replace(
                    self, band_set=bs.name, channel_names=bs.channel_names,
                    model_mean=bs.model_mean, model_std=bs.model_std,
                    image_shape=self.image_shape[:2] + (c,),
                    model_input_shape=self.model_input_shape[:2] + (c,),
                    parse_kwargs=self.parse_kwargs + bs.parse_kwargs)
        raise ValueError(f"bands: {name!r} is not a band set of {self.name} "
                         f"(offered: {', '.join(self.band_set_names)})")

    @property
    def band_set_names(self) -> tuple[str, ...]:
        """The band sets offered, this description's first."""
        others = tuple(bs.name for bs in self.band_sets if bs.name != self.band_set)
        return (self.band_set,) + others

    def for_pixel_maps(self, uses: bool) -> "ArchiveInfo":
        """This description as read for a model that uses pixel maps (``uses``: PCE, RRL) or
        not: the former adds ``map_parse_kwargs`` (later pairs win in parse_records)."""
        if not uses or not self.map_parse_kwargs:
            return self
        return dataclasses.replace(self, parse_kwargs=self.parse_kwargs + self.map_parse_kwargs,
                                   map_parse_kwargs=())


ARCHIVES: dict[str, ArchiveInfo] = {}


def register(info: ArchiveInfo) -> ArchiveInfo:
    """Add (or replace) an archive description; returns it."""
    ARCHIVES[info.name] = info
    return info


def names() -> tuple[str, ...]:
    return tuple(ARCHIVES)


def get(name: "str | ArchiveInfo") -> ArchiveInfo:
    """The description of ``name`` (a description is returned as is, e.g. one for another band
    set); ValueError naming the known archives otherwise."""
    if isinstance(name, ArchiveInfo):
        return name
    try:
        return ARCHIVES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown dataset {name!r}; expected one of "
                         f"{', '.join(ARCHIVES)}") from None


# ---------------------------------------------------------------- DLRSD (UC Merced + DLRSD maps)

DLRSD = register(ArchiveInfo(
    name="DLRSD", module="archives.dlrsd",
    class_names=("airplane", "bare soil", "buildings", "cars", "chaparral", "court", "dock",
                 "field", "grass", "mobile home", "pavement", "sand", "sea", "ship", "tanks",
                 "trees", "water"),
    image_shape=(256, 256, 3), model_input_shape=(224, 224, 3), train_crop=224,
    channel_names=("R", "G", "B"),
    model_mean=(76.54768, 76.80208, 73.49884), model_std=(72.219376, 70.419426, 63.12712),
    noise_levels=tuple(range(10, 100, 10)), has_pixel_maps=True, shuffle_buffer=1680,
    default_topk=420, headline_metric="NDCG@20", rgb_channels=(0, 1, 2), rgb_max=255.0,
    scene_classes=("agricultural", "airplane", "baseballdiamond", "beach", "buildings",
                   "chaparral", "denseresidential", "forest", "freeway", "golfcourse", "harbor",
                   "intersection", "mediumresidential", "mobilehomepark", "overpass",
                   "parkinglot", "river", "runway", "sparseresidential", "storagetanks",
                   "tenniscourt"),
    sample_module="archives.sample",
    # the demo runs on the hard sample variant, the setting of the robustness study
    # (docs/studies.md)
    demo_configs=("configs/demo_hard_grid_bce.json", "configs/demo_hard_bce.json"),
    demo_sample_args=("--variant", "hard", "--per-class", "20"), demo_folder="DLRSD-hard",
    demo_prep=("prep_DLRSD_noisy.py", "-r_dlrsd", "{raw}/DLRSD", "-r_ucm",
               "{raw}/UCMerced_LandUse", "-o", "{out}"),
))

# ---------------------------------------------------------------- BigEarthNet-S2 v1.0

BEN_BAND_STATS = {  # per-band mean / std of raw reflectance (the published values)
    "mean": {"B01": 340.76769064, "B02": 429.9430203, "B03": 614.21682446,
             "B04": 590.23569706, "B05": 950.68368468, "B06": 1792.46290469,
             "B07": 2075.46795189, "B08": 2218.94553375, "B8A": 2266.46036911,
             "B09": 2246.0605464, "B11": 1594.42694882, "B12": 1009.32729131},
    "std": {"B01": 554.81258967, "B02": 572.41639287, "B03": 582.87945694,
            "B04": 675.88746967, "B05": 729.89827633, "B06": 1096.01480586,
            "B07": 1273.45393088, "B08": 1365.45589904, "B8A": 1356.13789355,
            "B09": 1302.3292881, "B11": 1079.19066363, "B12": 818.86747235},
}
# 10 m bands first, then the 20 m bands resized to 120 x 120
BEN_MODEL_BANDS = ("B04", "B03", "B02", "B08", "B05", "B06", "B07", "B8A", "B11", "B12")

BEN = register(ArchiveInfo(
    name="BEN", module="archives.ben",
    class_names=tuple(_ben_constants.NEW_LABELS_ORIGINAL_ORDER),
    image_shape=(120, 120, len(BEN_MODEL_BANDS)),
    model_input_shape=(120, 120, len(BEN_MODEL_BANDS)),
    channel_names=BEN_MODEL_BANDS,
    model_mean=tuple(BEN_BAND_STATS["mean"][b] for b in BEN_MODEL_BANDS),
    model_std=tuple(BEN_BAND_STATS["std"][b] for b in BEN_MODEL_BANDS),
    noise_levels=(10, 20, 30, 40, 50, 60), has_pixel_maps=False, shuffle_buffer=10000,
    default_topk=1000, headline_metric="NDCG@30", rgb_channels=(0, 1, 2),
    sample_module="archives.sample_ben",
    demo_configs=("configs/demo_ben_grid_bce.json", "configs/demo_ben_bce.json"),
    demo_sample_args=("--patches", "200"),  # a test split of >= 30 patches (NDCG@30)
    demo_prep=("prep_BEN_noisy.py", "-r", "{raw}", "-o", "{out}", "-train", "{raw}/train.csv",
               "-val", "{raw}/val.csv", "-test", "{raw}/test.csv"),
))

# ---------------------------------------------------------------- BigEarthNet v2.0 (reBEN)

BENV2_BAND_STATS = {  # v2 train split (ConfigILM, 20 m bands resized to 120 px bicubic)
    "mean": {"B01": 360.64, "B02": 438.37, "B03": 614.06, "B04": 588.41, "B05": 942.75,
             "B06": 1769.85, "B07": 2049.48, "B08": 2193.29, "B8A": 2235.49, "B09": 2241.09,
             "B11": 1568.21, "B12": 997.72, "VV": -12.64, "VH": -19.35},
    "std": {"B01": 572.34, "B02": 607.03, "B03": 603.30, "B04": 684.57, "B05": 738.30,
            "B06": 1100.46, "B07": 1275.84, "B08": 1369.37, "B8A": 1356.75, "B09": 1313.65,
            "B11": 1070.80, "B12": 814.09, "VV": 5.13, "VH": 5.59},
}
BENV2_S1_BANDS = ("VV", "VH")  # backscatter in dB


def _benv2_band_set(name: str, channels: tuple[str, ...]) -> BandSet:
    return BandSet(name=name, channel_names=channels,
                   model_mean=tuple(BENV2_BAND_STATS["mean"][b] for b in channels),
                   model_std=tuple(BENV2_BAND_STATS["std"][b] for b in channels),
                   parse_kwargs=(("bands", name),))


# s2 (the published 10 bands, default), s1 (VV, VH), s1s2 (S2 then S1); the reference maps make
# PCE/RRL possible: they read the map noise rule, BCE-type models the BigEarthNet pair rule
BENV2 = register(ArchiveInfo(
    name="BENv2", module="archives.benv2",
    class_names=BEN.class_names,
    image_shape=(120, 120, len(BEN_MODEL_BANDS)),
    model_input_shape=(120, 120, len(BEN_MODEL_BANDS)),
    channel_names=BEN_MODEL_BANDS,
    model_mean=tuple(BENV2_BAND_STATS["mean"][b] for b in BEN_MODEL_BANDS),
    model_std=tuple(BENV2_BAND_STATS["std"][b] for b in BEN_MODEL_BANDS),
    noise_levels=(10, 20, 30, 40, 50, 60), has_pixel_maps=True, shuffle_buffer=10000,
    default_topk=1000, headline_metric="NDCG@30", rgb_channels=(0, 1, 2),
    sample_module="archives.sample_benv2",
    # the demo trains the pixel-based variant the reference maps make possible, and its baseline
    demo_configs=("configs/demo_benv2_grid_pce.json", "configs/demo_benv2_pce.json"),
    demo_sample_args=("--patches", "200"),  # a test split of >= 30 patches (NDCG@30)
    demo_prep=("prep_BEN_noisy.py", "-r", "{raw}", "-o", "{out}"),
    parse_kwargs=(("bands", "s2"), ("noise_rule", "pairs")),
    map_parse_kwargs=(("noise_rule", "map"),),
    band_sets=(_benv2_band_set("s1", BENV2_S1_BANDS),
               _benv2_band_set("s1s2", BEN_MODEL_BANDS + BENV2_S1_BANDS)),
    band_set="s2",
))
