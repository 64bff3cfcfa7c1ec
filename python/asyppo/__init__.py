"""asyppo"""
from . import _native
