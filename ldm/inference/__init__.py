"""Inference: loading a trained run and synthesising DWI / ADC volumes per patient in source space."""
