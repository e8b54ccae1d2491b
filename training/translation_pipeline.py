"""`pipeline("translation", model=REPO, trust_remote_code=True)` for checkpoints of `train_translation.py`.

transformers 5 removed its built-in "translation" task; this file is copied next to the weights and named in the
config's `custom_pipelines`, so the task name keeps working for our models. Standalone on purpose: it is remote
code and may import only transformers and torch.
"""

from transformers import Pipeline


class TranslationPipeline(Pipeline):
    """Text in the source language -> `[{"translation_text": ...}]`, decoded with the model's generation config
    (beam 4, length penalty 0.6, paper §6.1) unless generation kwargs are passed."""

    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = True

    def __call__(self, inputs, **kwargs):
        """A string gives `[{"translation_text": ...}]`; a list of strings a flat list, one dict per string
        (the shape of transformers 4's TranslationPipeline)."""
        result = super().__call__(inputs, **kwargs)
        if isinstance(inputs, list) and all(isinstance(r, list) and len(r) == 1 for r in result):
            return [r[0] for r in result]
        return result

    def _sanitize_parameters(self, max_source_length=None, **generate_kwargs):
        preprocess = {} if max_source_length is None else {"max_source_length": max_source_length}
        return preprocess, generate_kwargs, {}

    def preprocess(self, text, max_source_length=None):
        kwargs = {} if max_source_length is None else {"truncation": True, "max_length": max_source_length}
        return self.tokenizer(text, return_tensors="pt", **kwargs)

    def _forward(self, model_inputs, **generate_kwargs):
        return {"output_ids": self.model.generate(**model_inputs, **generate_kwargs)}

    def postprocess(self, model_outputs):
        texts = self.tokenizer.batch_decode(model_outputs["output_ids"], skip_special_tokens=True)
        return [{"translation_text": text} for text in texts]


CUSTOM_PIPELINES = {
    "translation": {
        "impl": "translation_pipeline.TranslationPipeline",
        "pt": ["AutoModelForSeq2SeqLM"],
        "type": "text",
    }
}
