from dooly.cli import run

run()
