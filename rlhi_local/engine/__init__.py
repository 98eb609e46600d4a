"""llama.cpp serving: the loaded model (`Engine`) and the FIFO that shares it (`RequestQueue`)."""

from .model import Engine, Finish, Piece, SamplingParams, physical_cores
from .queue import Job, RequestQueue

__all__ = ["Engine", "Finish", "Job", "Piece", "RequestQueue", "SamplingParams", "physical_cores"]
