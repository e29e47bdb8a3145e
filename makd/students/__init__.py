"""Students that are not truncated-SVD factors of the teacher: subquadratic token mixers in place of attention."""
