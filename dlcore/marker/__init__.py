"""Labels from another marker: align a re-stained or second-modality image to the routine stain."""
