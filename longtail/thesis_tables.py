"""The CIFAR-10-LT tables of the thesis, as data: rows, recipes and the published numbers.

LI Mengke, "Advances in Long-Tailed Visual Recognition", 2022 -- the tables ``longtail
reproduce`` re-runs and ``longtail results page`` reports against:

* Table 3.2 (KPS chapter: CE, LDAM-DRW, KPS with GA) and Table 3.4 (KPS optimisation
  strategies), both printed as top-1 *error* and converted here as ``100 - error``; the chapter
  trains with mini-batch 64 (Table 3.1);
* Table 4.2 (FBL chapter: CE, LDAM-DRW, LA, FBL) and Table 4.4 (FBL curricula);
* Table 5.2 (GCL chapter comparison) and Tables 5.4, 5.5 and 5.6 (GCL cloud sizes, stage-2
  samplers, classifier re-training strategies);
* the key rows (:data:`KEY_TABLE`, ``longtail reproduce key``): one line per method at rho = 100,
  each taken from its chapter's table;
* one reference outside the thesis (:data:`REFERENCE_TABLE`, ``longtail reproduce ref``): CE on
  the balanced CIFAR-10 (rho = 1) with He et al.'s schedule, against the ResNet-32 number of
  their paper. Seed-to-seed swings there are tenths, not points, so it measures what the data
  copy and the pipeline cost on their own.

Each table carries the numbers printed in *that* table: the CE baseline was measured per chapter
(70.36 / 75.22 in Table 3.2, 71.07 / 75.31 in Table 4.2, 65.68 / 70.70 / 74.81 in Table 5.2), and
each table is compared with its own. This module holds only the data and the small classes that
describe it; planning, running and summarising the runs is :mod:`longtail.reproduce`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Tuple

from .errors import ConfigError

__all__ = ["Row", "FigureSpec", "Table", "PUBLISHED_DATA", "TABLES", "KEY_TABLE", "KEY_RHO", "REFERENCE_TABLE",
           "HE2016_SCHEDULE", "PER_CLASS_TABLE", "get_table"]

#: The data protocol every published number here refers to.
PUBLISHED_DATA = "cifar10_lt"


@dataclass(frozen=True)
class Row:
    """One method (one line) of a thesis table.

    Attributes:
        label: The method as the thesis names it.
        recipe: Recipe of the stage-1 run (``cifar10_lt/gcl``).
        published: Published top-1 (%) per imbalance ratio; only the ratios the thesis reports,
            ``None`` where it prints "-".
        overrides: Extra stage-1 overrides of this row.
        stage2: Overrides of the stage-2 run (``longtail retrain``), or ``None`` for a one-stage
            method; ``()`` re-trains with the recipe's own ``stage2`` block.
        note: A remark printed under the table.
        per_class: Published per-class top-1 (%) per imbalance ratio, class 0 (the head) first,
            where the thesis prints them (Table 4.5: CE and FBL); empty elsewhere.
    """

    label: str
    recipe: str
    published: Mapping[int, Optional[float]]
    overrides: Tuple[str, ...] = ()
    stage2: Optional[Tuple[str, ...]] = None
    note: str = ""
    per_class: Mapping[int, Tuple[float, ...]] = field(default_factory=dict)

    @property
    def two_stage(self) -> bool:
        """Whether the row re-trains the classifier of its stage-1 run."""
        return self.stage2 is not None


@dataclass(frozen=True)
class FigureSpec:
    """A figure drawn from a table's runs once they have finished.

    Attributes:
        kind: ``per_class`` (per-class error bars), ``feature_norm`` (feature-norm curves; needs
            ``eval.feature_norms=true``) or ``tsne`` (t-SNE of test features).
        rows: Labels of the rows compared.
        name: File stem; the figure goes to ``<out>/<name>_rho<rho>.png``.
        caption: What the figure corresponds to in the thesis.
    """

    kind: str
    rows: Tuple[str, ...]
    name: str
    caption: str


@dataclass(frozen=True)
class Table:
    """A thesis table: its rows and where its numbers come from.

    Attributes:
        id: Thesis table number, e.g. ``"5.6"``.
        title: What the table compares.
        source: Where the published numbers are printed.
        rows: The rows.
        overrides: Stage-1 overrides shared by every row (e.g. the batch size of the chapter).
        note: A remark printed under the table.
        figures: Figures drawn from the runs.
    """

    id: str
    title: str
    source: str
    rows: Tuple[Row, ...]
    overrides: Tuple[str, ...] = ()
    note: str = ""
    figures: Tuple[FigureSpec, ...] = ()

    @property
    def rhos(self) -> List[int]:
        """The imbalance ratios the thesis reports for this table, largest first."""
        return sorted({r for row in self.rows for r in row.published}, reverse=True)

    def row(self, label: str) -> Row:
        """The row labelled ``label``."""
        for r in self.rows:
            if r.label == label:
                return r
        raise KeyError(label)


_GCL = "cifar10_lt/gcl"
_KPS_NOTE = "Batch 64 for every row (Table 3.1) unless a user override sets data.batch_size."


def _kps_table(id: str, title: str, rows: Tuple[Row, ...], figure: str, caption: str, note: str = "") -> Table:
    """A table of the KPS chapter: printed as top-1 error, batch 64 for every row (Table 3.1), and
    a per-class error figure of all its rows."""
    return Table(id=id, title=title,
                 source=f"thesis Table {id} (published as top-1 error; shown as 100 - error)",
                 overrides=("data.batch_size=64",), rows=rows, note=f"{_KPS_NOTE} {note}".strip(),
                 figures=(FigureSpec("per_class", tuple(r.label for r in rows), figure, caption),))


def _gcl_retrained(label: str, top1: float, stage2: str, note: str = "") -> Row:
    """A row of the GCL ablations: the shared GCL stage-1 run re-trained with one stage-2 setting
    (rho = 100 only)."""
    return Row(label, _GCL, {100: top1}, stage2=(stage2,), note=note)


_TAU_NORM_NOTE = (
    "GCL's stage-1 head is a cosine classifier; the thesis does not say how it tau-normalized it. longtail "
    "normalizes the head's stored weights and scores f . w_j / ||w_j||^tau on the unnormalized feature (tau = 1 "
    "ranks like the cosine head); tau is chosen on the val split, or on the test split where there is none "
    "(CIFAR), and then labelled so.")

TABLES: Dict[str, Table] = {
    t.id: t
    for t in (
        _kps_table(
            "3.2", "CIFAR-10-LT main comparison of the KPS chapter: CE, LDAM-DRW, KPS with GA",
            rows=(
                Row("CE", "cifar10_lt/ce", {100: 70.36, 50: 75.22}),
                Row("LDAM-DRW", "cifar10_lt/ldam_drw", {100: 77.03, 50: 81.03}),
                Row("KPS (with GA)", "cifar10_lt/kps_ga", {100: 81.23, 50: 84.59}),
            ),
            figure="fig3.8_per_class_error", caption="per-class error rates (cf. thesis Figure 3.8)",
            note="The CE baseline of this table (70.36 / 75.22) differs from Table 5.2's (70.70 / 74.81): the "
                 "thesis measured it per chapter.",
        ),
        _kps_table(
            "3.4", "KPS optimisation strategies: KPS alone, KPS + DRW, KPS + GA",
            rows=(
                Row("KPS w/o GA and DRW", "cifar10_lt/kps", {100: 80.15, 50: 83.60}),
                Row("KPS-DRW", "cifar10_lt/kps_drw", {100: 80.91, 50: 83.89}),
                Row("KPS-GA", "cifar10_lt/kps_ga", {100: 81.23, 50: 84.59}),
            ),
            figure="fig3.7_per_class_error",
            caption="per-class error rates of the optimisation strategies (cf. thesis Figure 3.7)",
        ),
        Table(
            id="4.2",
            title="CIFAR-10-LT comparison of the FBL chapter: CE, LDAM-DRW, LA, FBL",
            source="thesis Table 4.2",
            overrides=("eval.feature_norms=true",),
            rows=(
                Row("CE", "cifar10_lt/ce", {100: 71.07, 50: 75.31}, per_class={
                    100: (91.0, 98.2, 83.2, 72.5, 78.8, 65.1, 68.8, 59.5, 49.0, 44.6),
                    50: (84.5, 95.8, 68.5, 74.6, 81.1, 72.7, 82.9, 67.5, 59.1, 66.4)}),
                Row("LDAM-DRW", "cifar10_lt/ldam_drw", {100: 77.03, 50: 81.03}),
                Row("LA", "cifar10_lt/la", {100: 80.92, 50: None},
                    note="Menon et al.'s logit-adjusted loss (tau = 1), cited by the thesis without a setting: "
                         "trained in the chapter's CIFAR setting. The loss closest to FBL's mechanism (a "
                         "class-based logit shift during training, plain logits at prediction)."),
                Row("FBL", "cifar10_lt/fbl", {100: 82.46, 50: 84.30}, per_class={
                    100: (88.1, 94.7, 81.9, 73.0, 83.6, 75.1, 86.3, 77.3, 82.7, 81.9),
                    50: (83.7, 92.1, 81.7, 73.9, 85.0, 76.1, 87.7, 85.0, 88.5, 89.3)}),
            ),
            note="Runs log per-class test feature norms every epoch (eval.feature_norms=true; evaluation only). "
                 "The CE baseline of this table (71.07 / 75.31) differs from Table 5.2's: measured per chapter.",
            figures=(FigureSpec("feature_norm", ("CE", "FBL"), "fig4.2_feature_norms",
                                "feature norms of head and tail classes over epochs (cf. thesis Figure 4.2)"),),
        ),
        Table(
            id="4.4",
            title="FBL curricula alpha(t)",
            source="thesis Table 4.4",
            rows=tuple(Row(label, recipe, {100: top1}) for label, recipe, top1 in (
                ("Linear decrease", "cifar10_lt/fbl_linear_decrease", 75.97),
                ("Linear increase", "cifar10_lt/fbl_linear_increase", 81.67),
                ("Sine increase", "cifar10_lt/fbl_sine", 81.22),
                ("Cosine increase", "cifar10_lt/fbl_cosine", 80.79),
                ("Parabolic increase", "cifar10_lt/fbl", 82.46),
            )),
        ),
        Table(
            id="5.2",
            title="CIFAR-10-LT comparison of the GCL chapter",
            source="thesis Table 5.2",
            rows=(
                Row("CE", "cifar10_lt/ce", {200: 65.68, 100: 70.70, 50: 74.81}),
                # the stage-1 run of "CE + mixup + cRT", evaluated as it is: one run for both rows
                Row("CE + mixup", "cifar10_lt/ce_mixup_crt", {200: 65.84, 100: 72.96, 50: 79.48},
                    stage2=("stage2.method=none",)),
                Row("LDAM-DRW", "cifar10_lt/ldam_drw", {200: 73.52, 100: 77.03, 50: 81.03}),
                Row("CE + mixup + cRT", "cifar10_lt/ce_mixup_crt", {200: 73.06, 100: 79.15, 50: 84.21}, stage2=()),
                Row("GCL (CBEN + cRT)", _GCL, {200: 79.03, 100: 82.68, 50: 85.46}, stage2=()),
            ),
            figures=(FigureSpec("tsne", ("CE", "GCL (CBEN + cRT)"), "fig5.4_tsne",
                                "t-SNE of test-set embeddings, CE vs GCL stage 1 (cf. thesis Figure 5.4)"),),
        ),
        Table(
            id="5.4",
            title="GCL cloud-size strategies (full two-stage GCL: CBEN sampler + cRT)",
            source="thesis Table 5.4",
            rows=tuple(Row(label, recipe, {100: top1}, stage2=()) for label, recipe, top1 in (
                ("Cosine", "cifar10_lt/gcl_cloud_cos", 79.21),
                ("Power difference (exp. 1/3)", "cifar10_lt/gcl_cloud_cbrt", 80.80),
                ("Power difference (exp. 1/4)", "cifar10_lt/gcl_cloud_qrt", 82.31),
                ("Logarithm difference", _GCL, 82.68),
            )),
        ),
        Table(
            id="5.5",
            title="GCL stage-2 samplers (cRT), on the same GCL stage-1 runs",
            source="thesis Table 5.5",
            rows=tuple(_gcl_retrained(f"{label} + cRT", top1, f"stage2.sampler.name={sampler}")
                       for label, sampler, top1 in (
                           ("Instance balance", "instance", 80.41),
                           ("Class balance", "class_balanced", 82.43),
                           ("Effective number", "effective_number", 82.47),
                           ("CBEN", "cben", 82.68),
                       )),
        ),
        Table(
            id="5.6",
            title="GCL classifier re-training strategies, on the same GCL stage-1 runs",
            source="thesis Table 5.6",
            rows=(
                _gcl_retrained("w/o re-training", 80.52, "stage2.method=none"),
                _gcl_retrained("CBEN + LWS", 82.25, "stage2.method=lws"),
                _gcl_retrained("CBEN + tau-normalization", 82.16, "stage2.method=tau_norm", note=_TAU_NORM_NOTE),
                _gcl_retrained("CBEN + cRT", 82.68, "stage2.method=crt"),
            ),
        ),
    )
}

#: The imbalance ratio of the key rows.
KEY_RHO = 100


def _key_row(label: str, table_id: str, row_label: str, stage2: Tuple[str, ...] = (), note: str = "",
             overrides: Tuple[str, ...] = ()) -> Row:
    """A row of another table as a key row (at :data:`KEY_RHO`; the table's overrides folded into
    the row's, then ``overrides`` and, for two-stage rows, ``stage2`` appended)."""
    table = TABLES[table_id]
    row = table.row(row_label)
    s2 = None if row.stage2 is None else tuple(row.stage2) + tuple(stage2)
    return Row(label, row.recipe, {KEY_RHO: row.published[KEY_RHO]},
               overrides=tuple(table.overrides) + tuple(row.overrides) + tuple(overrides), stage2=s2,
               note=note or row.note)


#: The authors' GCL stage-1 script (and their KPS script): batch 64 and lr x0.1 after epoch 160,
#: x0.01 after 180, where the thesis's Table 5.1 gives batch 128 and x0.01 / x0.0001 (the recipe).
GCL_CODE_SCHEDULE = ("data.batch_size=64", "optim.milestone_factors=[0.1,0.01]")


#: The key rows every reproduction is read against first (``longtail reproduce key``): one line per
#: method of the thesis on CIFAR-10-LT, rho = 100, with its chapter's settings. The GCL rows share
#: one stage-1 run per seed.
KEY_TABLE = Table(
    id="key",
    title="Key rows of the thesis on CIFAR-10-LT, rho = 100",
    source="thesis Tables 3.2 (KPS), 4.2 (FBL), 5.2 (CE, CE + mixup, LDAM-DRW) and 5.6 (GCL)",
    rows=(
        _key_row("CE", "5.2", "CE", note="The thesis measured CE per chapter: 70.70 (Table 5.2), 70.36 (Table 3.2), "
                                          "71.07 (Table 4.2). On the JPEG copy of CIFAR-10 it measures the copy's "
                                          "offset."),
        _key_row("CE, fp32 (amp=none)", "5.2", "CE", overrides=("amp=none",),
                 note="CE trained in float32 everywhere. Beside the CE row (bf16 autocast on a CPU with native "
                      "bf16) it splits the JPEG copy's offset from the precision's."),
        _key_row("CE + mixup", "5.2", "CE + mixup",
                 note="Mixup (alpha = 1) is in GCL's stage 1 and stage 2 and in no other key row. Beside the CE row "
                      "it measures whether the JPEG copy costs a mixup-trained model more than CE; one stage-1 run "
                      "with the next row."),
        _key_row("CE + mixup + cRT", "5.2", "CE + mixup + cRT",
                 note="Kang et al.'s cRT (re-initialized linear classifier, class-balanced sampler, 10 epochs) on "
                      "the CE + mixup run: the two-stage baseline beside GCL + CBEN + cRT."),
        _key_row("LDAM-DRW", "5.2", "LDAM-DRW"),
        _key_row("KPS with GA (batch 64)", "3.2", "KPS (with GA)"),
        _key_row("FBL", "4.2", "FBL"),
        _key_row("FBL, fp32 (amp=none)", "4.2", "FBL", overrides=("amp=none",),
                 note="The recipe's FBL (batch 64) trained in float32 everywhere. Beside the FBL row (bf16 "
                      "autocast on a CPU with native bf16) it shows whether FBL pays for the precision where CE "
                      "does not."),
        _key_row("FBL, batch 128 (Table 4.1)", "4.2", "FBL", overrides=("data.batch_size=128",),
                 note="The recipe trains FBL with batch 64, as the authors' FBL script and the text of section "
                      "4.4.1.2 do; Table 4.1 says 128. Batch 64 takes twice the steps per epoch."),
        _key_row("FBL, A = 30 (batch 128)", "4.2", "FBL", overrides=("data.batch_size=128", "loss.params.A=30.0"),
                 note="Half the stimulus strength of the authors' CIFAR script (A = 60), at Table 4.1's batch 128: "
                      "read it against the batch-128 row. The thesis gives no value of A."),
        _key_row("GCL stage 1 only", "5.6", "w/o re-training"),
        _key_row("GCL + CBEN + cRT", "5.6", "CBEN + cRT"),
        _key_row("GCL + CBEN + cRT, classifier lr 0.008", "5.6", "CBEN + cRT", stage2=("stage2.lr=0.008",),
                 note="The authors' CIFAR stage-2 script peaks at a classifier lr of 0.002 in its latest version "
                      "(the recipe's) and 0.008 in an earlier commit. Same stage-1 runs."),
        _key_row("GCL stage 1 only, authors' code schedule", "5.6", "w/o re-training", overrides=GCL_CODE_SCHEDULE,
                 note="The authors' GCL stage-1 script trains with batch 64 and lr x0.1 after epoch 160, x0.01 after "
                      "180; Table 5.1 (and the recipe) give batch 128 and x0.01 / x0.0001."),
        _key_row("GCL + CBEN + cRT, authors' code schedule", "5.6", "CBEN + cRT", overrides=GCL_CODE_SCHEDULE,
                 note="Stage 2 of the code-schedule stage-1 runs, with the recipe's stage 2."),
    ),
)
TABLES[KEY_TABLE.id] = KEY_TABLE

#: He et al. 2016 (Deep Residual Learning, sec. 4.2) on CIFAR-10: batch 128, lr 0.1 divided by 10 at
#: 32k and 48k iterations, 64k iterations in all (82, 123 and 164 epochs of 391 steps), weight decay
#: 1e-4, no warm-up for ResNet-32; crop with 4-pixel padding and flip, as the recipe does.
HE2016_SCHEDULE = ("optim.epochs=164", "optim.milestones=[82,123]", "optim.milestone_factors=[0.1,0.01]",
                   "optim.weight_decay=1.0e-4", "optim.warmup_epochs=0")

#: A reference outside the thesis (``longtail reproduce ref``): plain CE on the whole, balanced
#: CIFAR-10 training split (rho = 1) with He et al.'s schedule and the thesis's ResNet-32. Its
#: published number is an error rate of 7.51 %, with little seed-to-seed spread, so a run here shows
#: what the data copy and the pipeline cost before any long-tailed method is involved.
REFERENCE_TABLE = Table(
    id="ref",
    title="Reference outside the thesis: CE on balanced CIFAR-10 (rho = 1), He et al.'s schedule",
    source="He et al. 2016, Deep Residual Learning for Image Recognition, Table 6 (ResNet-32: 7.51 % error)",
    rows=(
        Row("CE, ResNet-32, He et al. 2016 schedule", "cifar10_lt/ce", {1: 92.49}, overrides=HE2016_SCHEDULE,
            note="He et al. subtract the per-pixel mean; the recipe normalizes per channel. A public PyTorch "
                 "re-implementation of the same ResNet-32 (akamaster/pytorch_resnet_cifar10; the reference "
                 "ResNet-32 of the LDAM-DRW lineage derives from it) reports 7.37 % error (92.63) at 200 epochs "
                 "with lr steps at 100 and 150."),
    ),
)
TABLES[REFERENCE_TABLE.id] = REFERENCE_TABLE

#: The table whose rows carry the thesis's per-class accuracies (Table 4.5, CIFAR-10-LT; its means are
#: Table 4.2's CE and FBL numbers).
PER_CLASS_TABLE = "4.2"


def get_table(table_id: str) -> Table:
    """The registered table ``table_id`` (``"5.6"``; ``"table_5.6"`` works too).

    Raises:
        ConfigError: An unknown id; the message lists the valid ones.
    """
    key = str(table_id).strip().lower().removeprefix("table").strip(" _")
    if key not in TABLES:
        raise ConfigError(f"unknown table '{table_id}'; valid: {', '.join(TABLES)} (or 'list')")
    return TABLES[key]
