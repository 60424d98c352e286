from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("orders", "0004_step_name_choices"),
    ]

    operations = [
        migrations.AddField(
            model_name="saga",
            name="token",
            field=models.CharField(blank=True, max_length=16),
        ),
    ]
