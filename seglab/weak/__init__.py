"""Learning from weaker labels and from a teacher (issue 17): CAM generators trained on image
tags (MDC, FickleNet), the tags -> pseudo masks -> segmentation pipeline, and structured
knowledge distillation."""
