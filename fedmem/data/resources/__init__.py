"""Static reference data: the disease table and the ICD-10-CM code list."""
