"""What every job does around its work: logging and atomic writes (`io`), digests of finished
outputs (`integrity`), resumable training state (`checkpoint`), the device it computes on
(`devices`) and seeds derived from names (`seeds`). Imported by jobs, never by the workflow
side except for light lookups."""
