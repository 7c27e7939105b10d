"""Texts: the text modality (pipeline_lib.text.modality) and everything only texts need: text files and
their checks, the sentence encoder, its contrastive tuning, synthetic texts, text noise, the pyfunc model."""
