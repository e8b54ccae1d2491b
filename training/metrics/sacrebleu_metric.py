"""sacreBLEU (Post, 2018) as an `evaluate` metric module shipped with the project.

`evaluate.load("sacrebleu")` fetches its script from the Hub, which fails offline; this file is loaded by path
instead: `evaluate.load("training/metrics/sacrebleu_metric.py")`. It calls the `sacrebleu` package on detokenised
text and returns the corpus score with its signature, so a reported number says how it was computed.
"""

import datasets
import evaluate
import sacrebleu

_DESCRIPTION = "Corpus BLEU of detokenised hypotheses against one reference each, computed by sacreBLEU."
_KWARGS_DESCRIPTION = """
Args:
    predictions: list of detokenised hypothesis strings.
    references: list of lists of reference strings (one list per hypothesis; every list the same length).
    tokenize: sacreBLEU tokenizer, "13a" (its default, WMT's) unless stated.
    lowercase: case-insensitive BLEU (default False: cased, the usual report).
Returns:
    score (0-100), signature, counts, totals, precisions, bp, sys_len, ref_len.
"""
_CITATION = """@inproceedings{post-2018-call,
  title = "A Call for Clarity in Reporting {BLEU} Scores", author = "Post, Matt", booktitle = "WMT", year = "2018"}"""


class SacreBleuMetric(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("string"),
                    "references": datasets.Sequence(datasets.Value("string")),
                }
            ),
            reference_urls=["https://github.com/mjpost/sacrebleu"],
        )

    def _compute(self, predictions, references, tokenize="13a", lowercase=False):
        counts = {len(refs) for refs in references}
        if len(counts) > 1:
            raise ValueError("sacreBLEU needs the same number of references for every prediction")
        # sacreBLEU takes references as streams: one list per reference position, across all sentences.
        streams = [[refs[i] for refs in references] for i in range(counts.pop() if counts else 0)]
        bleu = sacrebleu.metrics.BLEU(tokenize=tokenize, lowercase=lowercase)
        result = bleu.corpus_score(predictions, streams)
        return {
            "score": result.score,
            "signature": str(bleu.get_signature()),
            "counts": result.counts,
            "totals": result.totals,
            "precisions": result.precisions,
            "bp": result.bp,
            "sys_len": result.sys_len,
            "ref_len": result.ref_len,
        }
