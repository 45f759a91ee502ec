"""What a bundle shows: evaluation on labelled images, the report page and its plots."""
