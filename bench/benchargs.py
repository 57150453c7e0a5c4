"""The benches' argument parser: a bad flag is one line on stderr and exit code 2, as in
`dooly` itself (argparse prints its usage block first)."""
from __future__ import annotations

import argparse


class Parser(argparse.ArgumentParser):
    def error(self, message: str):
        text = " ".join(message.split())
        self.exit(2, f"{self.prog}: error: {text[:300]} (see {self.prog} --help)\n")
