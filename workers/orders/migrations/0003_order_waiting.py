from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("orders", "0002_order_correlation_id"),
    ]

    operations = [
        migrations.AddField(
            model_name="order",
            name="waiting",
            field=models.CharField(blank=True, max_length=300),
        ),
    ]
