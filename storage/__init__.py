"""Files the project writes and reads back: whole-or-nothing writes, verified checkpoints and exports, run folders."""
