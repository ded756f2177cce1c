"""What a run's results become: aggregated statistics and figures, galleries, diagnostics,
the reference classifier's recognition rates, and the self-contained HTML report."""
